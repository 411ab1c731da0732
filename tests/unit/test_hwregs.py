"""The Python view of dmagate_hw.h: parsed, never copied."""

from __future__ import annotations

from dmagate.hwregs import HEADER, HW, parse_header


def test_parses_values_shifts_and_suffixes() -> None:
    text = """
#ifndef DMAGATE_HW_H
#define DMAGATE_HW_H
#define DMAGATE_A\t\t0x1f
#define DMAGATE_B 12 /* twelve */
#define DMAGATE_C\t(1U << 4)
#define DMAGATE_D\t0x9e3779b97f4a7c15ULL
#define OTHER_E 5
#endif
"""
    assert parse_header(text) == {"A": 0x1F, "B": 12, "C": 16, "D": 0x9E3779B97F4A7C15}


def test_every_define_of_the_real_header_is_read() -> None:
    lines = HEADER.read_text().splitlines()
    defines = [x for x in lines if x.startswith("#define DMAGATE_") and "DMAGATE_HW_H" not in x]
    assert len(HW) == len(defines)
    assert HW["ID_VALUE"] == int.from_bytes(b"DMAG", "little")
    assert HW["DESC_SIZE"] == 32 and HW["CPL_SIZE"] == 32 and HW["SG_SIZE"] == 16
