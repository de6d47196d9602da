"""Peak RSS growth of one load, measured in a fresh process per contender.

The parent runs ``python -m benchmarks.memory`` once per loader, so no contender's peak
or freed-but-kept memory can show up in another's figure. The child builds the W3 model
(every parameter written, so it is resident before the baseline), loads once to warm up,
collects garbage, then per repetition: reset the kernel's high-water mark
(``/proc/self/clear_refs``), read ``VmRSS``, load, read ``VmHWM``. Growth is the
difference. Where ``clear_refs`` is unavailable, a thread samples RSS with psutil instead.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .workloads import Sizes


@dataclass(frozen=True)
class MemoryResult:
    workload: str
    contender: str
    baseline_rss_bytes: int
    samples_bytes: tuple[int, ...]
    method: str

    @property
    def median(self) -> float:
        return statistics.median(self.samples_bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "contender": self.contender,
            "median_growth_bytes": self.median,
            "baseline_rss_bytes": self.baseline_rss_bytes,
            "samples_bytes": list(self.samples_bytes),
            "method": self.method,
        }


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def _peak_with_proc(load: Callable[[], None]) -> int:
    before = _status_bytes("VmRSS")
    load()
    return _status_bytes("VmHWM") - before


def _peak_with_sampler(load: Callable[[], None]) -> int:
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.0005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        load()
    finally:
        done.set()
        thread.join()
    return max(peak[0], process.memory_info().rss) - before


def probe(contender: str, artifacts_json: str, sizes_json: str, reps: int) -> dict[str, Any]:
    """The child's work: build W3, warm up, then measure ``reps`` loads."""
    import torch

    from .contenders import LOADERS, Artifacts
    from .workloads import build_w3

    torch.set_num_threads(1)  # as in the timed runs; threads do not change the peak
    fields = json.loads(artifacts_json)
    artifacts = Artifacts(
        Path(fields["store_root"]),
        Path(fields["safetensors_file"]),
        Path(fields["torch_file"]),
        Path(fields["peft_dir"]) if fields["peft_dir"] else None,
    )
    model = build_w3(Sizes(**json.loads(sizes_json))).model
    loader = LOADERS[contender]
    loader(model, artifacts)
    gc.collect()
    baseline = _status_bytes("VmRSS")
    samples = []
    method = "proc-hwm" if _reset_peak() else "psutil-sampler"
    for _ in range(reps):
        if method == "proc-hwm":
            _reset_peak()
            samples.append(_peak_with_proc(lambda: loader(model, artifacts)))
        else:
            samples.append(_peak_with_sampler(lambda: loader(model, artifacts)))
    return {"samples": samples, "method": method, "baseline": baseline}


def measure_memory(
    contenders: Sequence[str], artifacts: Any, sizes: Sizes, *, reps: int
) -> list[MemoryResult]:
    """Run the probe in a fresh interpreter per contender. The probes run side by side:
    RSS is per process, so they cannot see each other's peaks, and it saves minutes."""
    fields = {k: str(v) if v else "" for k, v in asdict(artifacts).items()}
    root = Path(__file__).resolve().parent.parent
    running = {
        contender: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.memory",
                contender,
                json.dumps(fields),
                json.dumps(asdict(sizes)),
                str(reps),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for contender in contenders
    }
    results = []
    for contender, process in running.items():
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"memory probe for {contender!r} failed:\n{stderr}")
        out = json.loads(stdout.strip().splitlines()[-1])
        results.append(
            MemoryResult("W3", contender, out["baseline"], tuple(out["samples"]), out["method"])
        )
    return results


if __name__ == "__main__":
    _, name, artifacts_arg, sizes_arg, reps_arg = sys.argv
    print(json.dumps(probe(name, artifacts_arg, sizes_arg, int(reps_arg))))
