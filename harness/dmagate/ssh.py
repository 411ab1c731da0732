"""SSH into the guest with paramiko: pinned host key, key auth, a transcript."""

from __future__ import annotations

import base64
import secrets
import select
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


class _Shell:
    """A /bin/sh on one channel that runs the harness's commands one after
    another, each as a ``sh -c`` of its own (its stdin /dev/null), or in
    the shell itself, and marks where each one's output ends and what it
    exited with."""

    def __init__(self, client: paramiko.SSHClient, timeout: float) -> None:
        transport = client.get_transport()
        if transport is None:
            raise RuntimeError("SSH is not connected")
        self._channel = transport.open_session(timeout=timeout)
        self._channel.exec_command("exec /bin/sh")

    @property
    def closed(self) -> bool:
        return self._channel.closed or self._channel.exit_status_ready()

    def close(self) -> None:
        self._channel.close()

    def run(self, command: str, deadline: float, own_shell: bool = True) -> tuple[int, str, str]:
        marker = f"dmagate-end-{secrets.token_hex(8)}"
        started = f"sh -c {shlex.quote(command)}" if own_shell else f"{{ {command}\n}}"
        self._channel.sendall(
            f"{started} </dev/null; "
            f"printf '%s %d\\n' {marker} $?; printf '%s\\n' {marker} >&2\n".encode())
        end = marker.encode()
        stdout, stderr = bytearray(), bytearray()
        status: int | None = None
        stderr_done = False
        channel = self._channel
        while status is None or not stderr_done:
            if channel.recv_ready():
                stdout += channel.recv(65536)
                status = _strip_status(stdout, end)
            elif channel.recv_stderr_ready():
                stderr += channel.recv_stderr(65536)
                if stderr.endswith(end + b"\n"):
                    stderr_done = True
                    del stderr[-len(end) - 1:]
            elif self.closed:
                # The shell itself ended (the command powered the guest off,
                # or killed it): what there was, and its status.
                if status is None:
                    status = channel.recv_exit_status() if channel.exit_status_ready() else -1
                self.close()
                break
            elif time.monotonic() > deadline:
                raise CommandTimeout(command)
            else:
                # Readable when either stream has data, or the channel ends.
                select.select([channel], [], [], min(0.05, max(deadline - time.monotonic(), 0)))
        return status, stdout.decode(errors="replace"), stderr.decode(errors="replace")


def _strip_status(stdout: bytearray, marker: bytes) -> int | None:
    """The status if ``stdout`` ends with the marker's line (which goes)."""
    if not stdout.endswith(b"\n"):
        return None
    at = stdout.rfind(marker + b" ")
    if at < 0:
        return None
    status = stdout[at + len(marker) + 1:-1]
    if not status.isdigit():
        return None
    del stdout[at:]
    return int(status)


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
        self._shell: _Shell | None = None

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

    def run(self, command: str, timeout: float = 60.0, check: bool = False,
            own_shell: bool = True) -> CommandResult:
        """Run ``command`` with the guest's /bin/sh; (status, stdout, stderr).

        Each command is a ``sh -c`` of its own, started by one shell that
        stays open on one channel (``_Shell``): a channel per command costs
        the guest a dropbear session, about 90 ms of CPU under TCG on the
        debug kernel, against 45 ms for the ``sh -c``. A command killed by a
        signal exits 128 + its number, as in sh.

        ``own_shell=False`` runs it in that long-lived shell itself, without
        the ``sh -c`` (30 of 105 ms of the debug guest's CPU for the health
        check's command): for the harness's own reads around every test,
        which leave nothing a later command would see (no cd, exit or
        variables).
        """
        self._transcript.write("$", command)
        started = time.monotonic()
        if self._shell is None or self._shell.closed:
            self._shell = _Shell(self.client, timeout)
        try:
            status, stdout, stderr = self._shell.run(command, started + timeout, own_shell)
        except CommandTimeout as err:
            # The command may still run; its shell goes with the channel, and
            # the next command gets a new one.
            self._shell.close()
            self._transcript.write("timeout", str(err))
            raise CommandTimeout(f"{command!r} still running after {timeout:.0f} s") from err
        result = CommandResult(status, stdout, stderr)
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
        if self._shell is not None:
            self._shell.close()
            self._shell = None
        if self._client is not None:
            self._client.close()
            self._client = None
