"""Device telemetry for `bench --soak` and `bench`: temperature, throttling and power where the device
has them, and the reason where it does not.

Sources, in order of preference:
- Raspberry Pi firmware through `vcgencmd`: `measure_temp` (SoC temperature), `get_throttled`
  (under-voltage, frequency capping, throttling and the soft temperature limit, now and since boot)
  and, on a Pi 5, `pmic_read_adc` (current and voltage of each PMIC rail: power is their sum of V x A);
- Linux thermal zones (`/sys/class/thermal/thermal_zone*/temp`, millidegrees);
- Intel RAPL (also AMD Zen on recent kernels) `/sys/class/powercap/intel-rapl:0/energy_uj`: power as
  the energy counter's rate between two readings (the whole CPU package, every process included).

Everything here is the standard library (it runs on the device beside the edge runner); the roots are
parameters so tests run it against fake sysfs trees and a fake `vcgencmd`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# get_throttled bits (Raspberry Pi firmware documentation, "vcgencmd get_throttled").
THROTTLE_BITS = {
    0: "under_voltage", 1: "arm_frequency_capped", 2: "throttled", 3: "soft_temperature_limit",
    16: "under_voltage_occurred", 17: "arm_frequency_capping_occurred", 18: "throttling_occurred",
    19: "soft_temperature_limit_occurred",
}
VCGENCMD_TIMEOUT_S = 2.0


def decode_throttled(value: int) -> dict[str, bool]:
    """`get_throttled`'s bit field as named flags (each True or False)."""
    return {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}


def pmic_power_w(text: str) -> float | None:
    """Total power of a Pi 5's PMIC rails from `vcgencmd pmic_read_adc`: per rail, V x A (rails that
    report both), summed. Lines look like `VDD_CORE_A current(7)=2.13245000A` / `VDD_CORE_V volt(15)=0.87920000V`."""
    amps, volts = {}, {}
    for name, value, unit in re.findall(r"(\w+?)_[AV]\s+\w+\(\d+\)=([\d.]+)([AV])", text):
        (amps if unit == "A" else volts)[name] = float(value)
    rails = set(amps) & set(volts)
    return round(sum(amps[r] * volts[r] for r in rails), 4) if rails else None


@dataclass
class Telemetry:
    """Reads the device's sensors; `read()` once per sample (power from RAPL needs two readings)."""

    sys_root: Path = Path("/sys")
    vcgencmd: str | None = field(default_factory=lambda: shutil.which("vcgencmd"))
    _last_energy: tuple[float, float] | None = field(default=None, repr=False)  # (time, joules)

    def _vc(self, *args: str) -> tuple[str | None, str | None]:
        if not self.vcgencmd:
            return None, "no vcgencmd (not a Raspberry Pi, or its firmware tools are not installed)"
        try:
            done = subprocess.run([self.vcgencmd, *args], capture_output=True, text=True, timeout=VCGENCMD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"vcgencmd {' '.join(args)} failed ({type(err).__name__})"
        if done.returncode != 0:
            return None, f"vcgencmd {' '.join(args)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[:80]}"
        return done.stdout, None

    def temperature(self) -> tuple[float | None, str, str | None]:
        """(°C, source, reason when None)."""
        out, vc_reason = self._vc("measure_temp")
        if out and (m := re.search(r"temp=([\d.]+)", out)):
            return float(m.group(1)), "vcgencmd measure_temp", None
        zones = []
        for zone in sorted((self.sys_root / "class" / "thermal").glob("thermal_zone*/temp")):
            try:
                zones.append(int(zone.read_text().strip()) / 1000)
            except (OSError, ValueError):
                continue
        if zones:
            return round(max(zones), 1), "thermal zones (hottest)", None
        return None, "", f"{vc_reason}; no readable {self.sys_root}/class/thermal/thermal_zone*/temp"

    def throttled(self) -> tuple[dict | None, str | None]:
        out, reason = self._vc("get_throttled")
        if out and (m := re.search(r"throttled=(0x[0-9a-fA-F]+)", out)):
            value = int(m.group(1), 16)
            return {"raw": m.group(1), **decode_throttled(value)}, None
        return None, reason or f"vcgencmd get_throttled gave no value ({(out or '').strip()[:60]})"

    def power(self) -> tuple[float | None, str, str | None]:
        """(watts, source, reason when None)."""
        out, vc_reason = self._vc("pmic_read_adc")
        if out and (watts := pmic_power_w(out)) is not None:
            return watts, "vcgencmd pmic_read_adc (sum of PMIC rails)", None
        energy = self.sys_root / "class" / "powercap" / "intel-rapl:0" / "energy_uj"
        try:
            joules = int(energy.read_text().strip()) / 1e6
        except (OSError, ValueError) as err:
            reason = f"{vc_reason or 'vcgencmd pmic_read_adc gave no rails (not a Pi 5)'}; {energy}: {type(err).__name__}"
            return None, "", reason
        now, last = time.perf_counter(), self._last_energy
        self._last_energy = (now, joules)
        if last is None or now <= last[0] or joules < last[1]:  # first reading, or the counter wrapped
            return None, "RAPL", "RAPL needs two readings for a rate (the first sample has none)"
        return round((joules - last[1]) / (now - last[0]), 3), "RAPL package energy (whole socket, all processes)", None

    def read(self) -> dict:
        """One sample: temperature, throttling flags, power, their sources and the reasons for what is missing."""
        temp, temp_source, temp_reason = self.temperature()
        throttled, throttled_reason = self.throttled()
        power, power_source, power_reason = self.power()
        unavailable = {k: v for k, v in (("temperature", temp_reason), ("throttled", throttled_reason),
                                          ("power", power_reason)) if v}
        return {"temperature_c": temp, "temperature_source": temp_source or None, "throttled": throttled,
                "power_w": power, "power_source": power_source or None, "unavailable": unavailable}
