"""Encoder specs: what a user types after ``-e`` or ``teacher.spec``, parsed into an :class:`EncoderSpec`.

The parsing half of the one resolver (:mod:`usjepa_fast.models.resolve` opens what is parsed here and
re-exports these names): :func:`parse_encoder_spec` says which form a string is, with one-line
errors for what is none of them. Only cheap checks happen here (files exist, the zoo entry and its
branch exist, a raw checkpoint has ``arch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.models.zoo import ZooEntry, parse_zoo_spec, zoo_entry

Form = Literal["timm", "random", "usfast", "checkpoint", "zoo", "runtime"]
RUNTIME_SUFFIXES = (".onnx", ".engine", ".plan")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar", ".ckpt")
POOLS = ("mean", "cls")
RUN_DIR_STUDENT = "student.safetensors"
SPEC_FORMS_HELP = (
    "a timm name, a usfast run dir / .safetensors, a checkpoint with --arch, zoo:NAME=PATH, random:SPEC[@seed], "
    "or an .onnx / .engine file"
)


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec: which form it is and what it points at."""

    form: Form
    text: str  # the spec as written
    path: Path | None = None  # weights file (usfast: the .safetensors; zoo / checkpoint / runtime: the file)
    name: str = ""  # timm: the model name; checkpoint: the arch; zoo: the entry name
    base: EncoderSpec | None = None  # random: the spec whose architecture is copied
    seed: int | None = None  # random: the @seed suffix (None = the caller's seed)
    entry: ZooEntry | None = field(default=None, compare=False)  # zoo: the entry (tests may pass a variant)
    branch: str | None = None  # zoo: the sub-dict picked with zoo:NAME:BRANCH=PATH (None = the entry's default)

    @property
    def sidecar(self) -> Path | None:
        """The usfast ``.json`` description beside a ``.safetensors`` (usfast form only)."""
        return self.path.with_suffix(".json") if self.form == "usfast" and self.path is not None else None

    @classmethod
    def for_zoo(cls, entry: ZooEntry, checkpoint: str | Path, branch: str | None = None) -> EncoderSpec:
        """The zoo form for an entry object (e.g. a test variant of a paper baseline)."""
        path = Path(checkpoint)
        if not path.is_file():
            raise UsfastError(f"{entry.name} checkpoint {path} does not exist; pass the local weights file")
        _check_branch(entry, branch)
        return cls("zoo", _zoo_text(entry, path, branch), path, entry.name, entry=entry, branch=branch)


def _zoo_text(entry: ZooEntry, path: Path, branch: str | None) -> str:
    return f"zoo:{entry.name}{':' + branch if branch else ''}={path}"


def _check_branch(entry: ZooEntry, branch: str | None) -> None:
    if branch is not None and branch not in entry.branches:
        choices = ", ".join(entry.branches) if entry.branches else "none (it has one set of weights)"
        raise UsfastError(f"zoo entry {entry.name} has no branch {branch!r}; its branches: {choices}")


def _split_seed(body: str) -> tuple[str, int | None]:
    head, sep, tail = body.rpartition("@")
    if sep and tail.isdigit():
        return head, int(tail)
    return body, None


def _run_dir_student(path: Path) -> Path:
    candidate = path / RUN_DIR_STUDENT
    if not candidate.is_file():
        raise UsfastError(
            f"{path} is a directory without {RUN_DIR_STUDENT} (a finished usfast run writes it); pass a checkpoint file"
        )
    return candidate


def parse_encoder_spec(spec: str | Path | EncoderSpec, arch: str | None = None) -> EncoderSpec:
    """Say which form ``spec`` is (see the module doc); one-line errors for what is none of them.

    Only cheap checks happen here (files exist, the zoo entry exists, a raw checkpoint has ``arch``);
    reading a sidecar and checking ``arch`` against it is :func:`resolve_encoder`'s job.
    """
    if isinstance(spec, EncoderSpec):
        return spec
    text = str(spec).strip()
    if not text:
        raise UsfastError(f"empty encoder spec; pass {SPEC_FORMS_HELP}")
    if text.startswith("random:"):
        body, seed = _split_seed(text[len("random:") :])
        if not body:
            raise UsfastError(
                f"{text!r}: random: needs a spec, e.g. random:runs/salt or random:vit_small_patch16_224@1"
            )
        base = parse_encoder_spec(body, arch)
        if base.form in ("random", "runtime"):
            what = "another random: spec" if base.form == "random" else "an ONNX / TensorRT file"
            raise UsfastError(
                f"{text}: random: copies the architecture of a torch-loadable spec (timm name, usfast run dir, "
                f"checkpoint + arch, zoo:NAME=PATH), not {what}"
            )
        return EncoderSpec("random", text, base.path, base.name, base=base, seed=seed)
    zoo = parse_zoo_spec(text)
    if zoo is not None:
        entry = zoo_entry(zoo.name)
        _check_branch(entry, zoo.branch)
        path = Path(zoo.path).expanduser()
        if entry.loader == "usfast" and path.is_dir():
            path = _run_dir_student(path)
        if not path.is_file():
            raise UsfastError(
                f"{text}: {entry.name} checkpoint {path} does not exist; pass the local weights file (nothing is "
                "downloaded)"
            )
        return EncoderSpec("zoo", text, path, entry.name, entry=entry, branch=zoo.branch)
    path = Path(text).expanduser()
    if path.suffix.lower() in RUNTIME_SUFFIXES:
        return EncoderSpec("runtime", text, path)
    if path.is_dir():
        return EncoderSpec("usfast", text, _run_dir_student(path))
    if path.is_file():
        if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
            return EncoderSpec("usfast", text, path)
        if arch is None:
            raise CheckpointError(
                f"checkpoint {path} has no usfast sidecar ({path.with_suffix('.json').name}); pass its timm "
                f"architecture (--arch / teacher.arch, e.g. vit_base_patch16_224 for URFM) or zoo:NAME={path}"
            )
        return EncoderSpec("checkpoint", text, path, arch)
    import timm

    if timm.is_model(text):
        return EncoderSpec("timm", text, name=text)
    if arch is not None or path.suffix.lower() in CHECKPOINT_SUFFIXES or "/" in text:
        raise CheckpointError(f"checkpoint {text} does not exist; check the path")
    raise UsfastError(
        f"'{text}' is neither an existing file nor a timm model name; pass a checkpoint path, a usfast run dir, "
        "zoo:NAME=PATH or a timm name"
    )
