"""train.py as a user runs it (issue 16): the run's settings and --resume, stopping on a signal, the log, the
export's config.json and --export-only, TensorBoard.

    python -m pytest tests/test_train_run.py -x -q

Real runs of a micro LLaMA on a synthetic pre-tokenised corpus; the signal tests start `python train.py` and
`torchrun ... train.py` as subprocesses, wait for a log line that shows training has started (never a fixed
sleep: the box may be loaded), send the signal and read what the run printed last.
"""
import contextlib
import io
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rope
import distributed
import metrics
import options
import train
from hf import args_from_config, save_pretrained
from model import Transformer
from conftest import MICRO

ROOT = Path(__file__).resolve().parent.parent
# What a real checkpoint's config.json carries besides the shape: the export must keep every one of these.
OWN_KEYS = {"pad_token_id": 0, "initializer_range": 0.02, "use_cache": True, "pretraining_tp": 1,
            "transformers_version": "4.31.0", "torch_dtype": "bfloat16", "some_future_key": {"a": [1, 2]}}
RUN = ["--window", "16", "--target", "64", "--batch-size", "4", "--micro-batch-size", "2", "--log-every", "1",
       "--lr", "1e-3", "--warmup", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
WAIT = 900  # seconds: a hang guard for a loaded machine, never a speed assertion


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    """A micro LLaMA whose config.json has the keys a real checkpoint carries besides the shape."""
    path = tmp_path_factory.mktemp("micro") / "model"
    model = Transformer(args_from_config(MICRO))
    model.init_weights(seed=0)
    save_pretrained(model, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **OWN_KEYS}, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16, "bos_token": "<s>"}))
    return path


@pytest.fixture(scope="module")
def finished(micro_model, corpus, tmp_path_factory):
    """A finished 2-step run of train.main in this process (checkpoints at steps 1 and 2): (out, argv, stdout).
    In-process, so that the tests reading it are fast ones; the signal tests below start `python train.py`."""
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), "--steps", "2",
            "--save-every", "1", *RUN]
    log, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(log):
            train.main(argv)
    finally:
        torch.set_num_threads(threads)
    return out, argv, log.getvalue()


def copy_run(finished, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    return out


def with_out(argv, out):
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(out)
    return argv


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def main_exits(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    return exit_.value.code, capsys.readouterr().err.strip()


# ---------------------------------------------------------------- refusals before anything is written

def test_a_checkpoint_without_data_is_refused_the_demo_corpus_is_only_the_demos(micro_model, tmp_path, capsys):
    code, err = main_exits(["--model", str(micro_model), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: --model {micro_model} needs --data")
    assert not (tmp_path / "out").exists()


def test_a_window_beyond_the_checkpoints_context_is_refused_naming_both(micro_model, corpus, tmp_path, capsys):
    model = ["--data", str(corpus), "--out", str(tmp_path / "out")]
    code, err = main_exits(["--model", str(micro_model), *model, "--window", "32"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "--window 32" in err and "context 16 (max_position_embeddings)" in err
    # An already-extended checkpoint (L_c 16 -> 64): its context is the rope's original window, not 64.
    scaled = tmp_path / "scaled"
    shutil.copytree(micro_model, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config.update(max_position_embeddings=64, rope_scaling={"rope_type": "linear", "factor": 4.0},
                  original_max_position_embeddings=16)
    (scaled / "config.json").write_text(json.dumps(config))
    code, err = main_exits(["--model", str(scaled), *model, "--window", "32", "--rope", "none"], capsys)
    assert code == 2 and "--window 32" in err and "context 16 (original_max_position_embeddings)" in err
    opts, _ = options.resolve(options.parse_args(["--model", str(scaled), *model, "--rope", "none"]), 1)
    assert opts.window == 16  # the default window is that context too
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- settings.json and --resume

def test_settings_json_records_the_resolved_run_before_training(finished):
    out, argv, _ = finished
    settings = json.loads((out / "settings.json").read_text())
    o = settings["options"]
    assert (o["window"], o["target"], o["method"], o["rope"], o["chunks"], o["steps"]) == \
        (16, 64, "pose", "linear", 2, 2)
    assert o["max_documents"] == 2 * 4 and o["lr"] == 1e-3 and settings["world_size"] == 1
    assert o["model"] == str(Path(argv[1]).resolve()) and [Path(p).is_absolute() for p in o["data"]] == [True]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # written under a temporary name, then renamed


def test_settings_are_written_after_the_weights_load_and_before_step_1(micro_model, corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), *RUN]
    seen = []

    def no_model(*args, **kwargs):  # a bad input found while the weights load: nothing written yet (issue 28)
        seen.append((out / "settings.json").exists())
        raise ValueError("stop here")

    with monkeypatch.context() as patch, distributed.distributed() as device, \
            pytest.raises(ValueError, match="stop here"):
        patch.setattr(train, "build_model", no_model)
        train.train(options.parse_args(argv), device)
    assert seen == [False] and not out.exists()

    def no_step(*args, **kwargs):  # the run stops where step 1 would train
        assert (out / "settings.json").is_file()
        raise RuntimeError("stop here")

    monkeypatch.setattr(train, "train_step", no_step)
    with distributed.distributed() as device, pytest.raises(RuntimeError, match="stop here"):
        train.train(options.parse_args(argv), device)
    assert json.loads((out / "settings.json").read_text())["options"]["target"] == 64


def test_raising_steps_on_resume_restretches_the_linear_decay_instead_of_training_at_lr_0(finished, tmp_path, capsys):
    """The 2-step schedule ends at lr 0; resumed with --steps 4, steps 3 and 4 take the 4-step schedule's rates:
    peak x (4 - s) / (4 - warmup) at 0-based step s (PoSE §4.1's linear decay, written out here)."""
    out = copy_run(finished, tmp_path)
    with distributed.distributed() as device:
        train.train(options.parse_args([*with_out(finished[1], out), "--steps", "4", "--resume"]), device)
    log = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    peak, warmup = 1e-3, 1
    assert [r["lr"] for r in rows[2:]] == pytest.approx([peak * (4 - 2) / (4 - warmup), peak * (4 - 3) / (4 - warmup)])
    assert "--steps 2 -> 4: the learning rate follows the 4-step schedule" in log
    settings = json.loads((out / "settings.json").read_text())["options"]
    assert settings["steps"] == 4 and settings["max_documents"] == 8  # the run's documents, not 4 x 4


def test_lowering_steps_below_the_checkpoint_is_refused(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    code, err = main_exits([*with_out(finished[1], out), "--steps", "1", "--resume"], capsys)
    assert code == 2 and "--steps 1 is below" in err and "--export-only" in err


# ---------------------------------------------------------------- the log

def test_the_log_opens_with_a_header_and_logs_step_1_with_an_eta(finished):
    lines = finished[2].splitlines()
    assert lines[0].startswith("model: ") and "parameters, context 16" in lines[0]
    data = 1 + next(i for i, line in enumerate(lines[1:]) if not line.startswith("data: "))
    assert data == 3 and lines[1].startswith("data: 1 file")  # load_data's lines (files, documents), in the header
    assert lines[2].startswith("data: 8 documents kept, 0 skipped as shorter than the window + 1 = 17 tokens")
    assert lines[3].startswith("extension: L_c 16 -> L_t 64, alpha 4 (linear rope x4 on L_c 16); PoSE, 2 chunks")
    assert lines[4].startswith("batch: 4 sequences of <= 16 tokens a step = world 1 (cpu) x micro-batch 2 x "
                               "accumulation 2; 2 steps, lr 0.001")
    assert lines[5].startswith(f"out: {finished[0]} (settings.json")
    steps = [line for line in lines if line.startswith("step ")]
    assert re.match(r"step 1/2  loss \d+\.\d{4}  lr .*  ETA (\d+h\d\dm|\d+m\d\ds|\d+s)$", steps[0]), steps[0]
    assert steps[-1].startswith("step 2/2") and lines[-1] == f"exported {finished[0] / 'final'}"


def test_human_durations():
    assert [metrics.human(s) for s in (0.4, 42, 185, 3725, 90061)] == ["0s", "42s", "3m05s", "1h02m", "25h01m"]


def test_tensorboard_without_the_package_is_one_line_naming_the_pip_command(micro_model, corpus, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, err = main_exits(["--model", str(micro_model), "--data", str(corpus), "--out", str(tmp_path / "out"),
                            *RUN, "--tensorboard"], capsys)
    assert code == 2 and err == "error: --tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (tmp_path / "out").exists()


def test_tensorboard_gets_every_logged_number_beside_metrics_jsonl(micro_model, corpus, tmp_path, monkeypatch):
    written = []

    class SummaryWriter:  # stands in for torch.utils.tensorboard's, which needs the optional package
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    out = tmp_path / "out"
    with distributed.distributed() as device:
        train.train(options.parse_args(["--model", str(micro_model), "--data", str(corpus), "--out", str(out),
                                      "--steps", "2", *RUN, "--tensorboard"]), device)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert written[0] == ("dir", str(out / "tensorboard")) and written[-1] == ("closed",)
    assert {(f"train/{k}", v, r["step"]) for r in rows for k, v in r.items() if k != "step"} == set(written[1:-1])


# ---------------------------------------------------------------- the export

def test_the_export_keeps_the_input_config_and_writes_rope_keys_every_reader_accepts(finished, micro_model):
    config = json.loads((finished[0] / "final" / "config.json").read_text())
    given = json.loads((micro_model / "config.json").read_text())
    changed = {"max_position_embeddings", "torch_dtype", "rope_theta", "rope_scaling", "rope_parameters",
               "original_max_position_embeddings"}
    assert {k: v for k, v in config.items() if k not in changed} == {k: v for k, v in given.items() if k not in changed}
    assert config["max_position_embeddings"] == 64 and config["torch_dtype"] == "float32"  # L_t; fp32 on CPU
    # transformers 4 (rope_scaling: nothing but rope_type / type / factor for linear), transformers 5
    # (rope_parameters: rope_type, rope_theta, factor), L_c in a key neither validates; as read in 4.57.6 and 5.24.0
    # (test_rope.py's HF4_KEYS / HF5_KEYS, checked there by benchmarks/hf_consumers.py)
    assert config["rope_scaling"] == {"rope_type": "linear", "type": "linear", "factor": 4.0}
    assert config["rope_parameters"] == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
    assert config["rope_theta"] == 10000.0 and config["original_max_position_embeddings"] == 16
    assert rope.rope_parameters(config)["original_max_position_embeddings"] == 16  # our loader reads L_c back
    tokenizer_config = json.loads((finished[0] / "final" / "tokenizer_config.json").read_text())
    assert tokenizer_config == {"model_max_length": 64, "bos_token": "<s>"}  # L_t: vLLM caps at it, HF warns past it


def test_export_only_writes_any_checkpoint_as_a_hugging_face_folder(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    shutil.rmtree(out / "final")
    train.main(["--export-only", "--out", str(out)])  # the latest: step 2, what the run exported as final/
    train.main(["--export-only", "--out", str(out), "--checkpoint", "step_1"])
    assert capsys.readouterr().out.splitlines()[-2:] == [f"exported {out / 'exports' / 'step_000002'}",
                                                         f"exported {out / 'exports' / 'step_000001'}"]
    final, step2, step1 = (load_file(p / "model.safetensors") for p in
                           (finished[0] / "final", out / "exports" / "step_000002", out / "exports" / "step_000001"))
    assert final.keys() == step2.keys() and all(torch.equal(final[k], step2[k]) for k in final)
    assert any(not torch.equal(step1[k], step2[k]) for k in step1)  # another step's weights
    assert (json.loads((out / "exports" / "step_000001" / "config.json").read_text())
            == json.loads((finished[0] / "final" / "config.json").read_text()))
    assert not (out / "final").exists() and len(list((out / "checkpoints").iterdir())) == 2  # nothing trained
    code, err = main_exits(["--export-only", "--out", str(out), "--checkpoint", "step_7"], capsys)
    assert code == 2 and err == (f"error: --checkpoint step_7: not in {out / 'checkpoints'} "
                                 "(saved: step_000001, step_000002)")
    code, err = main_exits(["--export-only", "--out", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no settings.json" in err


# ---------------------------------------------------------------- stopping on a signal

class Run:
    """A subprocess whose stdout is read line by line in a thread, so the test can wait for a line."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                                     cwd=ROOT, start_new_session=True)  # a signal for it alone, not for pytest
        self.lines, self.stdout = queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str):
        while (line := self.lines.get(timeout=WAIT)) is not None:
            if re.match(pattern, line):
                return
        raise AssertionError(f"the run ended before printing {pattern!r}: {self.proc.stderr.read()[-3000:]}")

    def stop(self, signum) -> tuple[int, str]:
        self.proc.send_signal(signum)
        err = self.proc.stderr.read()
        return self.proc.wait(timeout=WAIT), err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_python_train_py_at_a_step_boundary_with_one_line_to_resume(micro_model, corpus, tmp_path,
                                                                                signum):
    out = tmp_path / "out"
    argv = ["--model", str(micro_model), "--data", str(corpus), "--out", str(out), "--steps", "100000",
            "--save-every", "100000", *RUN]
    run = Run([sys.executable, str(ROOT / "train.py"), *argv])
    run.wait_for(r"step 2/")  # training has started
    code, err = run.stop(signum)
    assert code == 128 + signum
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    match = re.fullmatch(rf"stopped by {name} before step (\d+); (no checkpoint yet|latest checkpoint (\S+)); "
                         r"resume: (.*)", last)
    assert match, err
    assert shlex.split(match[4]) == ["python", str(ROOT / "train.py"), *argv, "--resume"]
    step = int(match[1]) - 1  # steps done
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, step + 1))  # every step done was logged whole, none after the stop
    saved = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
    if signum == signal.SIGTERM:  # a scheduler's kill follows: the step reached is saved first
        assert saved == [f"step_{step:06d}"] and match[3] == str(out / "checkpoints" / saved[0])
    else:  # a person at the keyboard: stop now, nothing saved beyond --save-every
        assert saved == [] and match[2] == "no checkpoint yet"
    assert not (out / "final").exists()


def torchrun_cmd(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(ROOT / "train.py"), *map(str, args)]


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_with_one_line_of_ours(micro_model, corpus, tmp_path):
    """torchrun forwards the signal to both ranks; they agree on the step boundary, save, and rank 0 alone
    speaks. torchrun then adds its own lines ("Received ... death signal", a SignalException traceback): the
    launcher's, explained in README; none of them comes from a rank."""
    out = tmp_path / "out"
    argv = ["--model", micro_model, "--data", corpus, "--out", out, "--steps", "100000", "--save-every", "100000",
            *RUN]
    run = Run(torchrun_cmd(*argv))
    run.wait_for(r"step 2/")
    code, err = run.stop(signal.SIGTERM)
    ours = [line for line in err.splitlines() if "stopped by" in line or line.startswith("error:")]
    assert code != 0 and len(ours) == 1, err
    match = re.fullmatch(r"stopped by SIGTERM before step (\d+); latest checkpoint (\S+); resume: (.*)", ours[0])
    assert match, err
    assert shlex.split(match[3]) == ["torchrun", "--nproc_per_node", "2", str(ROOT / "train.py"),
                                     *map(str, argv), "--resume"]
    assert Path(match[2]) == out / "checkpoints" / f"step_{int(match[1]) - 1:06d}" and Path(match[2]).is_dir()
    assert f'File "{ROOT / "train.py"}"' not in err and "ChildFailedError" not in err and err.count("Traceback") <= 1


@pytest.mark.slow
def test_bad_input_under_torchrun_is_one_line_from_rank_0(micro_model, tmp_path):
    done = subprocess.run(torchrun_cmd("--model", micro_model, "--out", tmp_path / "out"), capture_output=True,
                          text=True, timeout=WAIT, env=ENV, cwd=ROOT)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(ours) == 1 and "needs --data" in ours[0], done.stderr
    assert f'File "{ROOT / "train.py"}"' not in done.stderr  # no rank's traceback, only torchrun's own report
    assert not (tmp_path / "out").exists()
