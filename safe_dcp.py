"""Reading a DCP checkpoint without running anything from it: the trust boundary of a run folder from elsewhere.

    from safe_dcp import dcp_load, Untrusted, Unreadable
    dcp_load(state, Path("runs/pose16k/checkpoints/step_000500"))    # dcp.load, in place, running nothing
    python -m pytest tests/test_bad_input.py -q -k "code or record or metadata"

DCP's own FileSystemReader unpickles a checkpoint's .metadata with a plain pickle.load, and its load planner
unpickles the plain values inside the .distcp files (the step, the seed, Adam's hyper-parameters) with
torch.load(weights_only=False): a run folder given by someone else could run any code on --resume or
--export-only. Here the .metadata goes through _Unpickler, whose find_class admits only the globals this project's
checkpoints name (_ADMITTED: DCP's metadata dataclasses, a PosixPath, torch.Size, dtypes, layouts, the memory-format
enum; none runs anything when built), and _check_metadata then requires what DCP will follow to be ours: tensors
under model. / optim.state., every entry in a rank file __R_N.distcp beside it, raw (no transform). The plain
values and the tensors are read by torch.load(weights_only=True). What is refused is Untrusted (its pickle names
something else), what cannot be read Unreadable; dcp_load turns any rank's failure into the same one line on every
rank. README's "What a run folder is trusted with" states the boundary for users; checkpoints.py loads every
checkpoint (--resume, --export-only, damage's look at .metadata) through this file.
"""
import dataclasses
import io
import pathlib
import pickle
import re
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.futures import Future

class Untrusted(ValueError):
    """A checkpoint file whose pickle names something no checkpoint of this project holds: refused unread."""


class Unreadable(ValueError):
    """A checkpoint file whose bytes are not what its .metadata says (corrupt, sizes intact): damage() cannot
    see it, DCP finds it while reading, maybe on one rank only."""


def _weights_only_error(e: pickle.UnpicklingError, file: Path, what: str) -> ValueError:
    """torch.load(weights_only=True)'s refusal as our line, never its advice (to retry with weights_only=False):
    a pickle naming a global it does not admit is Untrusted, anything else a record that is no tensor / value."""
    text = str(e)
    if name := re.search(r"GLOBAL (\S+)", text):
        return Untrusted(f"{file}: refused, the pickle of {what} names {name[1]}, which no checkpoint of this "
                         f"project holds (nothing from it was run)")
    reason = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    return Unreadable(f"{file}: unreadable, {what} is no pickle torch.load(weights_only=True) reads"
                      f"{f' ({reason[1]})' if reason else ''}")


def _admitted() -> dict:
    """{(module, name): object} for every global a DCP .metadata of this project names, found by listing the
    pickles of real checkpoints (world 1 and 2) with pickletools: DCP's metadata dataclasses, the checkpoint's path,
    torch.Size, dtypes, layouts by name, the memory-format enum. None of them runs anything when the unpickler
    builds it: a dataclass stores its fields, torch.Size takes ints, _get_layout and an Enum look a name / value
    up, PosixPath joins strings (no I/O), and a dtype is a constant. The objects are resolved here, so the
    unpickler imports nothing either."""
    md = dcp_metadata
    admitted = {("torch.distributed.checkpoint.metadata", c.__name__): c for c in (
        md.Metadata, md.MetadataIndex, md.StorageMeta, md.TensorStorageMetadata, md.BytesStorageMetadata,
        md.ChunkStorageMetadata, md.TensorProperties, md._MEM_FORMAT_ENCODING)}
    admitted |= {("torch.distributed.checkpoint.filesystem", "_StorageInfo"): dcp_filesystem._StorageInfo,
                 ("torch", "Size"): torch.Size, ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
                 ("pathlib", "PosixPath"): pathlib.PosixPath,  # StorageMeta.checkpoint_id
                 ("pathlib._local", "PosixPath"): pathlib.PosixPath}  # its module from Python 3.13 on
    return admitted | {("torch", name): v for name, v in vars(torch).items() if isinstance(v, torch.dtype)}


_ADMITTED = _admitted()
_DISTCP = re.compile(r"__\d+_\d+\.distcp")  # what FileSystemWriter names a rank's file: never a path elsewhere


class _Unpickler(pickle.Unpickler):
    """pickle's unpickler, with find_class admitting _ADMITTED only: every global a pickle may call or build
    (REDUCE, NEWOBJ, BUILD, INST, OBJ, EXT* all go through find_class) is one of those, so nothing else runs."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in _ADMITTED:
            raise Untrusted(f"{self.path}: refused, its pickle names {module}.{name}, which no checkpoint of this "
                            f"project holds (nothing from it was run; share exports, not run folders: README)")
        return _ADMITTED[module, name]

    def persistent_load(self, pid):
        raise Untrusted(f"{self.path}: refused, its pickle asks for a persistent object, which no checkpoint of this "
                        f"project holds")


def _check_metadata(metadata, path: Path):
    """What DCP will follow in a .metadata, checked against what this project writes: tensors under model. and
    optim.state., the few plain values elsewhere, every entry's bytes in a rank file of this folder, untransformed."""
    def refuse(what):
        return Untrusted(f"{path}: refused, not a checkpoint of this project ({what})")
    md = dcp_metadata
    if not isinstance(metadata, md.Metadata):
        raise refuse(f"a pickled {type(metadata).__name__}, not DCP's Metadata")
    entries, storage = metadata.state_dict_metadata, metadata.storage_data
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise refuse("state_dict_metadata / storage_data are not dicts")
    for key, entry in entries.items():
        tensor = isinstance(key, str) and key.startswith(("model.", "optim.state."))
        if not isinstance(entry, md.TensorStorageMetadata if tensor else md.BytesStorageMetadata):
            raise refuse(f"entry {key!r} is a {type(entry).__name__}")
    for index, info in storage.items():
        if not (isinstance(index, md.MetadataIndex) and isinstance(info, dcp_filesystem._StorageInfo)):
            raise refuse(f"a storage entry {type(index).__name__}: {type(info).__name__}")
        if not (isinstance(info.relative_path, str) and _DISTCP.fullmatch(info.relative_path)):
            raise refuse(f"{index.fqn!r} is stored in {info.relative_path!r}, not a rank file __R_N.distcp beside it")
        if not all(type(n) is int and n >= 0 for n in (info.offset, info.length)):
            raise refuse(f"{index.fqn!r} at offset {info.offset!r}, length {info.length!r}")
        if info.transform_descriptors:  # DCP would decompress it (ZStandard); this project writes raw bytes
            raise refuse(f"{index.fqn!r} transformed by {info.transform_descriptors!r}")


class SafeReader(FileSystemReader):
    """DCP's FileSystemReader whose .metadata goes through _Unpickler and _check_metadata (DCP's own is a plain
    pickle.load: a run folder from elsewhere could run any code). read_metadata takes no rank argument, so DCP
    never falls back to the rank-local __R.metadata files this project does not write."""

    def read_metadata(self) -> dcp_metadata.Metadata:
        path = Path(self.path) / ".metadata"
        with open(path, "rb") as f:
            metadata = _Unpickler(f, path).load()
        _check_metadata(metadata, path)
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # as DCP's read_metadata does
        return metadata

    def read_data(self, plan, planner):
        """DCP's read, one file at a time, so that a record it cannot read is a line naming its file: the tensors'
        torch.load(weights_only=True) refusing a pickle, a record that is no zip archive."""
        by_file = {}
        for item in plan.items:
            by_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        for name, items in by_file.items():
            file = Path(self.path) / name
            try:
                super().read_data(dataclasses.replace(plan, items=items), planner).wait()
            except (Untrusted, Unreadable):
                raise
            except pickle.UnpicklingError as e:
                raise _weights_only_error(e, file, "a tensor") from None
            except (RuntimeError, ValueError, OSError, EOFError) as e:  # e.g. "PytorchStreamReader failed ..."
                raise Unreadable(f"{file}: unreadable ({type(e).__name__}: "
                                 f"{(str(e).strip().splitlines() or [''])[0]})") from None
        done = Future()
        done.set_result(None)
        return done


class SafePlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that the plain values of a checkpoint (the step, the seed, Adam's
    hyper-parameters) are unpickled by torch.load(weights_only=True), as its tensors are: DCP's own load_bytes
    uses weights_only=False on the .distcp bytes."""

    def __init__(self, checkpoint: Path):
        super().__init__()
        self.checkpoint = checkpoint

    def load_bytes(self, read_item, value):
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            file = self.checkpoint / self.metadata.storage_data[read_item.storage_index].relative_path
            raise _weights_only_error(e, file, repr(read_item.dest_index.fqn)) from None
        mine = io.BytesIO()
        torch.save(obj, mine)  # DCP places the value; it unpickles these bytes, written here from a plain value
        mine.seek(0)
        super().load_bytes(read_item, mine)


def _ours(e: BaseException) -> ValueError | None:
    """Our Untrusted / Unreadable inside DCP's CheckpointException (a rank's read failed, maybe another rank's)."""
    seen = [e]
    while seen:
        e = seen.pop()
        if isinstance(e, (Untrusted, Unreadable)):
            return e
        failures = [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()]
        seen += [x for x in (e.__cause__, e.__context__, *failures) if isinstance(x, BaseException)]
    return None


def dcp_load(state: dict, checkpoint: Path, no_dist: bool = False):
    """dcp.load through SafeReader and SafePlanner. DCP gathers every rank's error into the CheckpointException
    each rank raises, so every rank turns it into the same one line: ours (a refused file, a file whose records
    are unreadable, which damage() cannot see from the sizes alone), else the lowest failing rank's error (e.g.
    another model's shapes). A signal (KeyboardInterrupt) inside DCP stays what it is."""
    try:
        dcp.load(state, storage_reader=SafeReader(checkpoint), planner=SafePlanner(checkpoint), no_dist=no_dist)
    except (Exception, CheckpointException) as e:
        if (mine := _ours(e)) is not None:
            raise type(mine)(str(mine)) from None
        failures = sorted((rank, f[0] if isinstance(f, tuple) else f) for rank, f in getattr(e, "failures", {}).items())
        if failures and all(isinstance(error, Exception) for _, error in failures):
            rank, error = failures[0]
            raise Unreadable(f"{checkpoint}: unreadable checkpoint (rank {rank}: {type(error).__name__}: "
                             f"{(str(error).strip().splitlines() or [''])[0]})") from None
        raise
