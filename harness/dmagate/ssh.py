"""SSH into the guest with paramiko: pinned host key, key auth, a transcript."""

from __future__ import annotations

import base64
import shlex
import time
from pathlib import Path
from typing import NamedTuple

import paramiko

from dmagate.transcript import Transcript


class CommandResult(NamedTuple):
    status: int
    stdout: str
    stderr: str


class CommandTimeout(TimeoutError):
    pass


class CommandFailed(RuntimeError):
    def __init__(self, command: str, result: CommandResult) -> None:
        super().__init__(
            f"{command!r} exited {result.status}\nstdout: {result.stdout[-2000:]}\n"
            f"stderr: {result.stderr[-2000:]}"
        )
        self.result = result


def host_key_from_line(line: str) -> paramiko.PKey:
    """Parse an OpenSSH public key line ("ssh-ed25519 AAAA... comment")."""
    kind, blob = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class SSH:
    """One SSH connection to the guest, reused for every command."""

    def __init__(
        self,
        port: int,
        client_key: Path,
        host_key_line: str,
        transcript: Transcript,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port
        self._key = paramiko.Ed25519Key.from_private_key_file(str(client_key))
        self._host_key = host_key_from_line(host_key_line)
        self._transcript = transcript
        self._client: paramiko.SSHClient | None = None

    def connect(self, timeout: float) -> None:
        """Connect, retrying until the guest's sshd answers or ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            client = paramiko.SSHClient()
            # The guest's host key was made with the image: pin it, never ask.
            client.get_host_keys().add(
                f"[{self.host}]:{self.port}", self._host_key.get_name(), self._host_key
            )
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(
                    self.host,
                    port=self.port,
                    username="root",
                    pkey=self._key,
                    timeout=max(deadline - time.monotonic(), 0.5),
                    banner_timeout=max(deadline - time.monotonic(), 0.5),
                    auth_timeout=max(deadline - time.monotonic(), 0.5),
                    allow_agent=False,
                    look_for_keys=False,
                )
            except (OSError, paramiko.SSHException, EOFError) as err:
                client.close()
                last = err
                time.sleep(0.1)
                continue
            self._client = client
            self._transcript.write("connected", f"{self.host}:{self.port}")
            return
        raise TimeoutError(f"guest sshd on {self.host}:{self.port} not answering: {last}")

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise RuntimeError("SSH is not connected")
        return self._client

    def run(self, command: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        """Run ``command`` with the guest's /bin/sh; (status, stdout, stderr)."""
        self._transcript.write("$", command)
        started = time.monotonic()
        channel = self.client.get_transport().open_session(timeout=timeout)  # type: ignore[union-attr]
        channel.settimeout(timeout)
        channel.exec_command(command)
        stdout, stderr = bytearray(), bytearray()
        deadline = started + timeout
        try:
            while not (channel.exit_status_ready() and not channel.recv_ready()
                       and not channel.recv_stderr_ready()):
                if time.monotonic() > deadline:
                    raise CommandTimeout(f"{command!r} still running after {timeout:.0f} s")
                if channel.recv_ready():
                    stdout += channel.recv(65536)
                elif channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                else:
                    channel.status_event.wait(0.02)
            status = channel.recv_exit_status()
        except (TimeoutError, CommandTimeout) as err:
            self._transcript.write("timeout", str(err))
            raise CommandTimeout(f"{command!r} still running after {timeout:.0f} s") from err
        finally:
            channel.close()
        result = CommandResult(
            status, stdout.decode(errors="replace"), stderr.decode(errors="replace")
        )
        self._transcript.write(
            f"exit {status} in {time.monotonic() - started:.3f}s",
            (result.stdout + ("\n[stderr]\n" + result.stderr if result.stderr else "")),
        )
        if check and status != 0:
            raise CommandFailed(command, result)
        return result

    def upload(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a file to the guest (cat over exec: dropbear has no SFTP)."""
        data = local.read_bytes()
        self._transcript.write("upload", f"{local} -> {remote} ({len(data)} bytes)")
        channel = self.client.get_transport().open_session()  # type: ignore[union-attr]
        quoted = shlex.quote(remote)
        channel.exec_command(f"cat > {quoted} && chmod {mode:o} {quoted}")
        channel.sendall(data)
        channel.shutdown_write()
        status = channel.recv_exit_status()
        channel.close()
        if status != 0:
            raise RuntimeError(f"upload to {remote} failed with status {status}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
