"""The GPU acceptance run: the CUDA tests and every GPU target, measured, in one table.

    make gpu-bundle        # where pip and ../shared/data are: wheels + data into .gpu/
    make gpu-check         # on the GPU machine, with its own python3 (docs/gpu.md: Contributing)

Each step is a subprocess with its own time limit: one that fails or runs out is a row of the
table, and the rest go on. In order of what matters most:
1. the CUDA tests (tests/test_cuda.py): no synchronizing call in training and validation steps
   under `torch.cuda.set_sync_debug_mode("error")` for every configuration, deterministic device
   decoding, decoding while the training stream is busy;
2. loop overhead (benchmarks/loop_overhead.py): fast_cifar against the plain loop on device
   data, resnet50 at 224 px (bf16, channels_last) eager and compiled;
3. cifar10_fast time to accuracy on the JPEG CIFAR-10, 3 seeds after a warm-up run
   (benchmarks/cifar10_time_to_accuracy.py);
4. the ImageNet-photo feed (benchmarks/input_pipeline.py): the loader with decode=cpu and
   decode=device, and resnet50_imagenet trained with whatever decode=auto picks, eager and
   compiled (the compiled loop of 2 runs last, on the compiler's warm caches);
5. what the augmentation policies cost batched on the device, 256 images at 224 px, against
   torchvision's per image (benchmarks/augment_policies.py).
Sized to end within 7 minutes on one H100/H200 with 16 cores; `--budget` seconds on, no step
starts, and at `--deadline` seconds a step still running is stopped (the table always comes out
inside a 10-minute command). The table and every step's output go to $OUT (or logs/gpu_check/).
`--smoke` runs the same plumbing at toy sizes on whatever device there is (a CPU: to check the
script, not the targets).
"""

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
EXTRACTED = Path("/tmp/imgcls-gpu-check")


@dataclass
class Target:
    """One figure a step prints: `pattern`'s first group (its last match), compared with
    `passes` (None: shown for information). The pattern "exit" reads the step's exit code."""

    label: str
    pattern: str
    passes: Callable[[float], bool] | None = None
    shown: str = "{:.3f}"

    def read(self, output: str, returncode: int | None) -> float | None:
        if self.pattern == "exit":
            return None if returncode is None else float(returncode)
        found = re.findall(self.pattern, output)
        return float(found[-1].replace(",", "")) if found else None

    def judge(self, output: str, returncode: int | None, ended: str) -> tuple[str, str, str]:
        value = self.read(output, returncode)
        if value is None:  # a figure for information only fails nothing
            return self.label, f"not printed ({ended})", "FAIL" if self.passes else "-"
        verdict = "-" if self.passes is None else ("PASS" if self.passes(value) else "FAIL")
        return self.label, self.shown.format(value), verdict


@dataclass
class Step:
    name: str
    command: list[str]
    timeout: int
    targets: list[Target] = field(default_factory=list)
    needs: str | None = None  # a data folder that must exist first

    def run(self, env: dict[str, str], seconds_left: float) -> tuple[str, int | None, str]:
        """(output, exit code or None, how it ended), within its timeout and `seconds_left`.
        It runs in a process group of its own, ended with it: no worker of a step (pytest's,
        a DataLoader's, the compiler's) outlives it to slow the next."""
        timeout = max(1.0, min(self.timeout, seconds_left))
        process = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
            returncode, ended = process.returncode, f"exit {process.returncode}"
        except subprocess.TimeoutExpired:
            returncode, ended = None, f"timed out after {timeout:.0f} s"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if returncode is None:
            output, _ = process.communicate()
        return output, returncode, ended


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


# (pattern of the value, passes) per figure; the patterns match the benchmarks' own lines
RATIO = r"ratio imgcls/plain device data=([\d.]+)"
CIFAR_ACC, CIFAR_TIME = r"cifar10_fast: test accuracy ([\d.]+)", r"training time ([\d.]+) \+-"
LOADER = r"decode={}\), original photos:\s+([\d,]+)"
TRAINED = r"resnet50_imagenet{} \(decode=[^)]*\), \d+ epochs: ([\d,]+) img/s"
WAITED = r"resnet50_imagenet{} \(decode=[^)]*\), .*data wait ([\d.]+)%"
POLICY_MS = r"{} +batched ([\d.,]+) "
POLICY_RATIO = r"{} +batched .*ratio batched/per_image=([\d.]+)"


def steps(smoke: bool, cifar: Path, photos: Path) -> list[Step]:
    """The steps at full size, or at toy sizes (`smoke`)."""
    python = [sys.executable, "-u"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    speed = ["--device", device, "--precision", "bf16-mixed", "--channels-last"]
    if smoke:
        toy = ["--net", "cifar_quick", "--steps", "4", "--epochs", "2", "--repeats", "1"]
        loops = [("fast_cifar", [*toy, "--batch", "32"], 0.9)]
        cifar_options = ["--seeds", "1", "--minutes", "0.2"]
        feed = ["--samples", "64", "--batch", "16", "--epochs", "2", "--workers", "1"]
        policies = ["--size", "32", "--batch", "8", "--batches", "1", "--repeats", "1"]
        tests = []
    else:
        r50 = ["--net", "resnet50", "--size", "224", "--batch", "256", "--steps", "24"]
        loops = [
            (
                "fast_cifar",
                ["--net", "fast_cifar", "--batch", "1024", "--steps", "48", "--repeats", "2"],
                0.9,
            ),
            ("resnet50 eager", [*r50, "--epochs", "2", "--repeats", "2"], 0.97),
            ("resnet50 compiled", [*r50, "--epochs", "2", "--repeats", "1", "--compile"], 0.97),
        ]
        cifar_options = ["--seeds", "3", "--minutes", "1", "trainer.accelerator=gpu"]
        workers = str(max(1, (os.cpu_count() or 2) - 1))
        feed = ["--samples", "5120", "--batch", "256", "--epochs", "3", "--workers", workers]
        feed += ["--train-compiled"]
        policies = ["--size", "224", "--batch", "256", "--batches", "3", "--repeats", "3"]
        tests = ["-n", "4"]
    made = [
        Step(
            "CUDA tests",
            [*python, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", *tests],
            300,
            [
                Target("CUDA tests passed", r"(\d+) passed", None, "{:.0f}"),
                Target("CUDA tests: exit code (0: all passed)", "exit", at_most(0), "{:.0f}"),
            ],
        )
    ]
    loop_steps = [
        Step(
            f"loop overhead, {name}",
            [*python, "benchmarks/loop_overhead.py", *speed, *options, "--loops", "device,imgcls"],
            240,
            [Target(f"{name}: imgcls / plain loop on device data", RATIO, at_least(limit))],
        )
        for name, options, limit in loops
    ]
    made += [step for step in loop_steps if "compiled" not in step.name]
    command = [*python, "benchmarks/cifar10_time_to_accuracy.py", "--data", str(cifar)]
    made.append(
        Step(
            "cifar10_fast time to accuracy",
            [*command, "--recipe", "cifar10_fast", *cifar_options],
            300,
            [
                Target("cifar10_fast test accuracy, mean", CIFAR_ACC, at_least(0.906), "{:.4f}"),
                Target("cifar10_fast training time, mean s", CIFAR_TIME, at_most(2.75), "{:.2f}"),
            ],
            needs=str(cifar),
        )
    )
    command = [*python, "benchmarks/input_pipeline.py", "--images", str(photos), "--train"]
    count = "{:,.0f}"
    made.append(
        Step(
            "ImageNet-photo feed",
            [*command, "--decode", "cpu", "--decode", "device", "--repeats", "1", *feed],
            420,
            [
                Target("photo loader, decode=cpu, img/s", LOADER.format("cpu"), None, count),
                Target("photo loader, decode=device, img/s", LOADER.format("device"), None, count),
                Target("resnet50_imagenet eager, img/s", TRAINED.format(""), at_least(3650), count),
                Target("... eager, data wait %", WAITED.format(""), at_most(5.0), "{:.1f}"),
                Target(
                    "resnet50_imagenet compiled, img/s",
                    TRAINED.format(", compiled"),
                    at_least(4850),
                    count,
                ),
                Target(
                    "... compiled, data wait %", WAITED.format(", compiled"), at_most(5.0), "{:.1f}"
                ),
            ],
            needs=str(photos),
        )
    )
    made.append(
        Step(
            "augmentation policies on the device",
            [*python, "benchmarks/augment_policies.py", "--device", device, *policies],
            120,
            [
                *(
                    Target(f"{name} batched, ms per batch", POLICY_MS.format(name), None, "{:.1f}")
                    for name in ("ta_wide", "randaugment", "augmix")
                ),
                Target(
                    "randaugment: batched / torchvision per image, speed",
                    POLICY_RATIO.format("randaugment"),
                    None,
                    "{:.2f}",
                ),
            ],
        )
    )
    # last: the photo feed's compiled run has filled the compiler's caches by then
    return made + [step for step in loop_steps if "compiled" in step.name]


def extract(data: Path) -> tuple[Path, Path, subprocess.Popen | None]:
    """The CIFAR-10 JPEG tree and the ImageNet photos: extracted from `data`'s archives into
    /tmp (in the background: CIFAR-10's 60,000 files take a while), or found as folders."""
    cifar, photos = data / "cifar10-jpg", data / "imagenet-sample-100"
    pending = None
    if not cifar.is_dir() and (data / "cifar10-jpg.tar.xz").is_file():
        cifar = EXTRACTED / "cifar10-jpg"
        if not (cifar / "test").is_dir():
            cifar.mkdir(parents=True, exist_ok=True)
            archive = str(data / "cifar10-jpg.tar.xz")
            pending = subprocess.Popen(["tar", "-xJf", archive, "-C", str(cifar)])
    if not photos.is_dir() and (data / "imagenet-sample-100.tar").is_file():
        EXTRACTED.mkdir(parents=True, exist_ok=True)
        archive = str(data / "imagenet-sample-100.tar")
        subprocess.run(["tar", "-xf", archive, "-C", str(EXTRACTED)], check=True)
        photos = EXTRACTED / "imagenet-sample-100"
    return cifar, photos, pending


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".gpu", help="archives or folders")
    parser.add_argument("--budget", type=float, default=420, help="seconds; then no step starts")
    parser.add_argument(
        "--deadline", type=float, default=520, help="seconds; a step still running is stopped"
    )
    parser.add_argument("--smoke", action="store_true", help="toy sizes: check the script")
    parser.add_argument("--only", help="run only the steps whose name contains this")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT") or REPO / "logs" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cifar, photos, pending = extract(args.data)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    import lightning
    import torchvision

    header = (
        f"{gpu}, {os.cpu_count()} CPUs; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, lightning {lightning.__version__}"
    )
    print(header, flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    rows: list[tuple[str, str, str]] = []
    with open(out / "gpu_check.log", "w") as log:
        for step in steps(args.smoke, cifar, photos):
            if args.only and args.only not in step.name:
                continue
            elapsed = time.perf_counter() - start
            if elapsed > args.budget:
                rows += [(t.label, "not run (budget spent)", "-") for t in step.targets]
                continue
            if step.needs and pending is not None:
                pending.wait()
                pending = None
            if step.needs and not Path(step.needs).is_dir():
                rows += [(t.label, f"no data: {step.needs}", "FAIL") for t in step.targets]
                continue
            print(f"[{elapsed:5.0f} s] {step.name}: {' '.join(step.command[2:])}", flush=True)
            began = time.perf_counter()
            output, returncode, ended = step.run(env, args.deadline - elapsed)
            seconds = time.perf_counter() - began
            log.write(f"===== {step.name} ({ended}, {seconds:.0f} s)\n{output}\n")
            log.flush()
            rows += [target.judge(output, returncode, ended) for target in step.targets]
            print(f"        {ended} in {seconds:.0f} s", flush=True)
    total = time.perf_counter() - start
    width = max(len(label) for label, _, _ in rows)
    table = [header, f"{'target':<{width}}  {'measured':>22}  verdict"]
    table += [f"{label:<{width}}  {value:>22}  {verdict}" for label, value, verdict in rows]
    table.append(f"total {total:.0f} s; every step's output: {out / 'gpu_check.log'}")
    text = "\n".join(table)
    print("\n" + text)
    (out / "gpu_check.txt").write_text(text + "\n")
    sys.exit(1 if any(verdict == "FAIL" for _, _, verdict in rows) else 0)


if __name__ == "__main__":
    main()
