"""Device telemetry against fake sysfs trees and a fake `vcgencmd` (a Raspberry Pi 5's outputs)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medlite.bench.telemetry import Telemetry, decode_throttled, pmic_power_w

PMIC = """\
     3V7_WL_SW_A current(0)=0.00000000A
   VDD_CORE_A current(7)=2.00000000A
     EXT5V_V volt(24)=5.12000000V
   VDD_CORE_V volt(15)=0.90000000V
     3V3_SYS_A current(5)=0.10000000A
     3V3_SYS_V volt(13)=3.30000000V
"""


def fake_vcgencmd(folder: Path, throttled: str = "0x50005", temp: str = "48.3") -> str:
    script = folder / "vcgencmd"
    script.write_text(f"""#!/bin/sh
case "$1" in
  measure_temp) echo "temp={temp}'C" ;;
  get_throttled) echo "throttled={throttled}" ;;
  pmic_read_adc) cat <<'END'
{PMIC}END
  ;;
  *) echo "unknown command" >&2; exit 2 ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def fake_sys(root: Path, zones: dict[int, int], energy_uj: int | None = None) -> Path:
    for i, milli in zones.items():
        (root / "class" / "thermal" / f"thermal_zone{i}").mkdir(parents=True)
        (root / "class" / "thermal" / f"thermal_zone{i}" / "temp").write_text(f"{milli}\n")
    if energy_uj is not None:
        rapl = root / "class" / "powercap" / "intel-rapl:0"
        rapl.mkdir(parents=True)
        (rapl / "energy_uj").write_text(str(energy_uj))
    return root


def test_throttled_bits_decode_as_the_firmware_documents():
    flags = decode_throttled(0x50005)  # under-voltage now, throttled now; both occurred since boot
    assert flags["under_voltage"] and flags["throttled"] and not flags["arm_frequency_capped"]
    assert flags["under_voltage_occurred"] and flags["throttling_occurred"] and not flags["soft_temperature_limit_occurred"]
    assert not any(decode_throttled(0).values())


def test_pmic_power_is_the_sum_of_volts_times_amps_over_rails_with_both():
    # VDD_CORE 0.9 V x 2.0 A + 3V3_SYS 3.3 V x 0.1 A; 3V7_WL_SW (no volts) and EXT5V (no amps) do not count
    assert pmic_power_w(PMIC) == pytest.approx(0.9 * 2.0 + 3.3 * 0.1)
    assert pmic_power_w("no rails here") is None


def test_a_raspberry_pi_reads_its_firmware(tmp_path):
    t = Telemetry(sys_root=fake_sys(tmp_path / "sys", {0: 61000}), vcgencmd=fake_vcgencmd(tmp_path))
    sample = t.read()
    assert sample["temperature_c"] == 48.3 and sample["temperature_source"] == "vcgencmd measure_temp"
    assert sample["throttled"]["raw"] == "0x50005" and sample["throttled"]["throttled"]
    assert sample["power_w"] == pytest.approx(2.13) and "pmic" in sample["power_source"]
    assert sample["unavailable"] == {}


def test_without_vcgencmd_thermal_zones_and_rapl_are_read_and_the_rest_is_said(tmp_path):
    root = fake_sys(tmp_path / "sys", {0: 45500, 1: 52250}, energy_uj=10_000_000)
    t = Telemetry(sys_root=root, vcgencmd=None)
    first = t.read()
    assert first["temperature_c"] == pytest.approx(52.25, abs=0.051)  # the hottest zone, to 0.1 degree
    assert first["power_w"] is None and "two readings" in first["unavailable"]["power"]
    assert first["throttled"] is None and "no vcgencmd" in first["unavailable"]["throttled"]
    (root / "class" / "powercap" / "intel-rapl:0" / "energy_uj").write_text(str(10_000_000 + 2_000_000))  # +2 J
    second = t.read()
    assert second["power_w"] is not None and second["power_w"] > 0 and "RAPL" in second["power_source"]


def test_nothing_readable_gives_reasons_not_numbers(tmp_path):
    sample = Telemetry(sys_root=tmp_path / "empty", vcgencmd=None).read()
    assert sample["temperature_c"] is None and sample["power_w"] is None and sample["throttled"] is None
    assert set(sample["unavailable"]) == {"temperature", "power", "throttled"}


def test_a_failing_vcgencmd_is_a_reason(tmp_path):
    broken = tmp_path / "vcgencmd"
    broken.write_text("#!/bin/sh\necho 'VCHI initialization failed' >&2\nexit 255\n")
    broken.chmod(0o755)
    sample = Telemetry(sys_root=tmp_path / "empty", vcgencmd=str(broken)).read()
    assert "exited 255" in sample["unavailable"]["throttled"] and "VCHI" in sample["unavailable"]["throttled"]


def test_soak_records_power_energy_and_throttling(tmp_path):
    from deploy_helpers import make_model

    from medlite.bench.soak import soak, write_soak

    model = make_model(tmp_path / "m")
    t = Telemetry(sys_root=fake_sys(tmp_path / "sys", {0: 50000}), vcgencmd=fake_vcgencmd(tmp_path, throttled="0x0"))
    result = soak(model, 2.0, telemetry=t, interval=1.0)
    s = result["summary"]
    assert s["power_w_mean"] == pytest.approx(2.13) and s["energy_mj_per_inference_mean"] > 0
    assert s["throttled"] is not None and not any(s["throttled"].values())
    row = result["rows"][0]
    assert row["energy_mj_per_inference"] == pytest.approx(row["power_w"] / row["inferences_per_s"] * 1000, rel=1e-3)
    files = write_soak(result, tmp_path / "soak.csv")
    header = (tmp_path / "soak.csv").read_text().splitlines()[0]
    assert "power_w" in header and "throttled" in header and len(files) >= 1
