"""Training recipes (``cmah train --recipe NAME|PATH``): one versioned TOML file is a whole training run.

A recipe names a model preset with overrides (``[model]``), the training split (``[data]``), defaults
for every training stage (``[defaults]``) and an ordered list of stages (``[[stage]]``), each ``kind =
"train"`` (the :class:`~model.train.Trainer`, step-based: ``steps`` optimiser steps) or ``kind =
"average"`` (the uniform mean of the previous stage's last ``last`` weight snapshots). Stage *i* runs in
``OUT/<i>-<name>/`` and starts from stage *i-1*'s final model; a finished stage leaves ``stage.json``, so
``--resume`` skips it and resumes the unfinished one from its checkpoint, exactly. The shipped recipes are
in ``model/recipes/``; the format is described in docs/model.md ("Recipes").
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .backbone import PRETRAINED
from .config import CODE_LENGTHS, CMAHConfig, LossConfig, get_config
from .dataset import PointDataset, load_dataset
from .device import cpu_name, pick_device
from .train import CHECKPOINT_FILE, GEOMETRY_FILE, TrainConfig, Trainer, snapshot_path

log = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
RESOLVED_FILE = "recipe.resolved.json"
STAGE_DONE_FILE = "stage.json"
WEIGHTS_DIR = "weights"
#: TrainConfig fields a recipe does not set: wall-clock and epoch settings (recipes count optimiser
#: steps), the split (``[data]``), the stage chaining (``init_from``) and run-time stops.
NOT_IN_RECIPES = frozenset({"epochs", "warmup_epochs", "schedule", "step_epochs", "n_train", "holdout",
                            "time_limit_min", "time_budget_min", "max_steps", "checkpoint_every_min",
                            "init_from", "neighbour_refresh_epochs"})
TRAIN_KEYS = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name not in NOT_IN_RECIPES}
LOSS_KEYS = {f.name: f.type for f in dataclasses.fields(LossConfig)}
STAGE_KEYS = {**TRAIN_KEYS, **LOSS_KEYS}
MODEL_KEYS = {"preset": "str", "bits": "tuple[int, ...]", "hash_hidden": "int", "image_mask_ratio": "float",
              "point_mask_ratio": "float", "hash_head": "str"}
MODEL_TABLES = ("image", "points", "decoder")
DATA_KEYS = {"path": "str", "n_train": "int", "holdout": "int"}
TOP_KEYS = ("name", "description", "model", "data", "defaults", "stage")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file, the stage and the key."""


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str                            # "train" or "average"
    train: TrainConfig | None = None     # kind "train"
    loss: LossConfig | None = None       # kind "train"
    last: int = 0                        # kind "average": how many of the previous stage's snapshots

    @property
    def steps(self) -> int:
        return (self.train.steps or 0) if self.train else 0


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    path: Path
    sha256: str
    model: CMAHConfig                    # the architecture; each train stage brings its own loss
    data_path: str | None
    n_train: int | None
    holdout: int
    stages: tuple[Stage, ...]

    def stage_dir(self, out: Path, i: int) -> Path:
        return out / f"{i + 1}-{self.stages[i].name}"

    def resolved(self, data_sha256: str) -> dict[str, Any]:
        """Everything a run depends on, every default filled in (``OUT/recipe.resolved.json``)."""
        stages = [{"name": s.name, "kind": s.kind, "last": s.last} if s.kind == "average" else
                  {"name": s.name, "kind": s.kind, **dataclasses.asdict(s.train), "loss": dataclasses.asdict(s.loss)}
                  for s in self.stages]
        return {"recipe": self.name, "description": self.description, "file": str(self.path),
                "sha256": self.sha256, "model": self.model.to_dict(),
                "data": {"path": self.data_path, "sha256": data_sha256, "n_train": self.n_train,
                         "holdout": self.holdout},
                "stages": stages}


# --- reading ---------------------------------------------------------------------------------------
def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (``model/recipes/NAME.toml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.toml"
    if _NAME.fullmatch(str(name_or_path)) and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
    raise RecipeError(f"{name_or_path}: no such recipe file or shipped recipe (shipped: {', '.join(names)})")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe; :class:`RecipeError` names what is wrong."""
    path = find_recipe(name_or_path)
    raw = path.read_bytes()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: not a valid TOML file ({exc})") from None
    return _Reader(path).recipe(doc, hashlib.sha256(raw).hexdigest())


class _Reader:
    """Validation with messages of the form ``FILE: [WHERE: ]KEY: PROBLEM``."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, msg: str) -> RecipeError:
        return RecipeError(f"{self.path}: {where + ': ' if where else ''}{msg}")

    def table(self, doc: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, f"{key}: expected a table, got {_kind(value)}")
        return value

    def check_keys(self, table: dict[str, Any], known: Any, where: str) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(where, f"unknown key {key!r}{hint}")

    def values(self, table: dict[str, Any], types: dict[str, str], where: str) -> dict[str, Any]:
        """``table``'s values checked against the field annotations in ``types`` (lists -> tuples)."""
        self.check_keys(table, types, where)
        return {key: self.value(value, types[key], f"{where}: {key}" if where else key)
                for key, value in table.items()}

    def value(self, value: Any, annotation: str, where: str) -> Any:
        kinds = [k.strip() for k in annotation.split("|") if k.strip() != "None"]
        if len(kinds) == 1 and kinds[0].startswith("tuple["):
            items = [k.strip() for k in kinds[0][len("tuple["):-1].split(",")]
            if not isinstance(value, list) or not value or (items[-1] != "..." and len(value) != len(items)):
                size = "a non-empty list" if items[-1] == "..." else f"a list of {len(items)}"
                raise RecipeError(f"{self.path}: {where}: expected {size}, got {value!r}")
            return tuple(self.value(v, items[0], where) for v in value)
        for kind in kinds:
            if kind == "bool" and isinstance(value, bool) or kind == "str" and isinstance(value, str):
                return value
            if kind in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
                return float(value) if kind == "float" else value
            if kind == "float" and isinstance(value, float):
                return value
        expected = " or ".join(kinds) if all(k in ("bool", "str", "int", "float") for k in kinds) else None
        if expected is None:
            raise RecipeError(f"{self.path}: {where}: cannot be set in a recipe")
        raise RecipeError(f"{self.path}: {where}: expected {expected}, got {_kind(value)} {value!r}")

    def positive(self, values: dict[str, Any], keys: tuple[str, ...], where: str, low: int = 1) -> None:
        for key in keys:
            if key in values and values[key] < low:
                raise self.fail(where, f"{key}: must be >= {low}, got {values[key]}")

    # --- the tables ------------------------------------------------------------------------------
    def recipe(self, doc: dict[str, Any], sha256: str) -> Recipe:
        self.check_keys(doc, TOP_KEYS, "")
        name = self.value(doc.get("name", self.path.stem), "str", "name")
        if not _NAME.fullmatch(name):
            raise self.fail("", f"name: use letters, digits, '.', '_' and '-' only, got {name!r}")
        data = self.values(self.table(doc, "data"), DATA_KEYS, "[data]")
        self.positive(data, ("n_train",), "[data]")
        self.positive(data, ("holdout",), "[data]", low=0)
        model = self.model(self.table(doc, "model"))
        stages = doc.get("stage")
        if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
            raise self.fail("", "stage: expected one or more [[stage]] tables")
        defaults = self.table(doc, "defaults")
        self.values(defaults, STAGE_KEYS, "[defaults]")
        parsed: list[Stage] = []
        for i, table in enumerate(stages):
            parsed.append(self.stage(i, table, defaults, parsed))
        names = [s.name for s in parsed]
        if len(set(names)) != len(names):
            raise self.fail("", f"stage names must differ, got {names}")
        return Recipe(name, self.value(doc.get("description", ""), "str", "description"), self.path, sha256,
                      model, data.get("path"), data.get("n_train"), data.get("holdout", 0), tuple(parsed))

    def model(self, table: dict[str, Any]) -> CMAHConfig:
        self.check_keys(table, {*MODEL_KEYS, *MODEL_TABLES}, "[model]")
        if "preset" not in table:
            raise self.fail("[model]", "missing required key 'preset'")
        plain = self.values({k: v for k, v in table.items() if k not in MODEL_TABLES}, MODEL_KEYS, "[model]")
        try:
            cfg = get_config(plain.pop("preset"))
        except ValueError as exc:
            raise self.fail("[model]", f"preset: {exc}") from None
        if any(b not in CODE_LENGTHS for b in plain.get("bits", ())):
            raise self.fail("[model]", f"bits: each must be one of {list(CODE_LENGTHS)}, got {list(plain['bits'])}")
        if "bits" in plain:
            plain["bits"] = tuple(sorted(set(plain["bits"])))
        for part in MODEL_TABLES:
            sub = getattr(cfg, part)
            types = {f.name: f.type for f in dataclasses.fields(sub)}
            where = f"[model.{part}]"
            plain[part] = dataclasses.replace(sub, **self.values(self.table(table, part, "[model]"), types, where))
        return dataclasses.replace(cfg, **plain)

    def stage(self, i: int, table: dict[str, Any], defaults: dict[str, Any], before: list[Stage]) -> Stage:
        label = table.get("name")
        where = f"stage {i + 1}" + (f" ({label!r})" if isinstance(label, str) else "")
        for key in ("name", "kind"):
            if key not in table:
                raise self.fail(where, f"missing required key {key!r}")
        name = self.value(table["name"], "str", f"{where}: name")
        if not _NAME.fullmatch(name):
            raise self.fail(where, f"name: use letters, digits, '.', '_' and '-' only, got {name!r}")
        kind = self.value(table["kind"], "str", f"{where}: kind")
        rest = {k: v for k, v in table.items() if k not in ("name", "kind")}
        if kind == "average":
            return self.average(where, name, rest, before)
        if kind != "train":
            raise self.fail(where, f"kind: unknown stage kind {kind!r} (choose 'train' or 'average')")
        values = self.values({**defaults, **rest}, STAGE_KEYS, where)
        if "steps" not in values:
            raise self.fail(where, "missing required key 'steps'")
        self.positive(values, ("steps", "batch_size", "log_every", "neighbour_refresh_steps"), where)
        self.positive(values, ("warmup_steps", "snapshot_every", "neighbours"), where, low=0)
        if values.get("warmup_steps", 0) >= values["steps"]:
            raise self.fail(where, f"warmup_steps: must be < steps ({values['steps']}), got {values['warmup_steps']}")
        if values.get("neighbours") and "neighbour_refresh_steps" not in values:
            raise self.fail(where, "neighbours needs neighbour_refresh_steps (rebuild the graph every N steps)")
        loss = LossConfig(**{k: v for k, v in values.items() if k in LOSS_KEYS})
        if loss.fusion and not loss.reconstruction:
            raise self.fail(where, "fusion: needs reconstruction = true (the fused tokens feed the decoders)")
        if not (loss.cl_full or loss.cl_masked or loss.reconstruction):
            raise self.fail(where, "cl_full, cl_masked, reconstruction: at least one loss term must be on")
        train = TrainConfig(**{k: v for k, v in values.items() if k in TRAIN_KEYS})
        return Stage(name, kind, train=train, loss=loss)

    def average(self, where: str, name: str, rest: dict[str, Any], before: list[Stage]) -> Stage:
        values = self.values(rest, {"last": "int"}, where)
        if "last" not in values:
            raise self.fail(where, "missing required key 'last' (how many snapshots to average)")
        prev = before[-1] if before else None
        if prev is None or prev.kind != "train" or not prev.train.snapshot_every:
            raise self.fail(where, "kind: 'average' needs a previous train stage with snapshot_every > 0")
        have = prev.steps // prev.train.snapshot_every
        if not 1 <= values["last"] <= have:
            raise self.fail(where, f"last: must lie in [1, {have}] (stage {prev.name!r} saves {have} "
                            f"snapshots), got {values['last']}")
        return Stage(name, "average", last=values["last"])


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


# --- running ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecipeRun:
    """What :func:`run_recipe` did: ``stopped`` is "completed" or why it stopped (resumable)."""

    stopped: str
    steps: int                   # optimiser steps done, all stages
    weights: Path | None         # OUT/weights when completed


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _check_out(out: Path, resolved: dict[str, Any], resume: bool) -> None:
    """A new run needs a fresh OUT; a resumed one the same recipe file (byte for byte) and data. (Not
    the same resolved settings: a config field added to the code since, at its default, is no change;
    the trainer compares the model configs of its checkpoints.)"""
    path = out / RESOLVED_FILE
    if not path.is_file():
        return
    if not resume:
        raise RecipeError(f"{out}: holds a recipe run already; continue it with --resume or choose a new --out")
    old = json.loads(path.read_text())
    changed = [k for k in ("recipe", "sha256") if old.get(k) != resolved[k]]
    changed += ["data sha256"] if old.get("data", {}).get("sha256") != resolved["data"]["sha256"] else []
    if changed:
        raise RecipeError(f"{out}: was started with another recipe or data ({', '.join(changed)} differ); "
                          "resume it with the same ones or choose a new --out")


def average_snapshots(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The uniform mean of the floating-point tensors of the models saved in ``paths``; integer buffers
    (BatchNorm's batch counters) are the last model's."""
    total: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for path in paths:
        last = torch.load(path, map_location="cpu", weights_only=False)["model"]
        for key, value in last.items():
            if value.is_floating_point():
                total[key] = total[key] + value if key in total else value.clone()
    return {k: total[k] / len(paths) if v.is_floating_point() else v for k, v in last.items()}


def _run_average(recipe: Recipe, i: int, out: Path) -> dict[str, Any]:
    """Stage ``i``: the mean of stage ``i - 1``'s last snapshots, as a checkpoint the next stage (or the
    export) starts from."""
    prev, stage = recipe.stages[i - 1], recipe.stages[i]
    every = prev.train.snapshot_every
    steps = [every * k for k in range(prev.steps // every - stage.last + 1, prev.steps // every + 1)]
    t0 = time.monotonic()
    state = average_snapshots([snapshot_path(recipe.stage_dir(out, i - 1), s) for s in steps])
    stage_dir = recipe.stage_dir(out, i)
    stage_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(recipe.model, loss=prev.loss)
    torch.save({"model": state, "model_config": cfg.to_dict(), "step": 0, "averaged_steps": steps},
               stage_dir / CHECKPOINT_FILE)
    log.info("stage %s: averaged the weights of %s at steps %s", stage.name, prev.name, steps)
    return {"averaged_steps": steps, "elapsed_s": round(time.monotonic() - t0, 1)}


def _export(recipe: Recipe, out: Path, record: dict[str, Any]) -> Path:
    from .cmah import CMAH
    from .weights import save_weights

    ck = torch.load(recipe.stage_dir(out, len(recipe.stages) - 1) / CHECKPOINT_FILE, map_location="cpu",
                    weights_only=False)
    model = CMAH(CMAHConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    return save_weights(model.encoder, out / WEIGHTS_DIR, extra={"recipe": record})


def _stop_before(stage: Stage, done: int, max_steps: int | None, time_limit_min: float | None,
                 t0: float) -> str | None:
    """Why the run stops before ``stage`` (``done`` steps into the run, started at ``t0``), if it does."""
    if stage.kind != "train":
        return None
    if max_steps is not None and done >= max_steps:
        return "max_steps"
    if time_limit_min is not None and time.monotonic() - t0 >= time_limit_min * 60:
        return "time_limit"
    return None


def _device_string(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def run_recipe(recipe: Recipe, data: PointDataset | str | Path, out: str | Path, device: str = "auto",
               resume: bool = False, max_steps: int | None = None, time_limit_min: float | None = None,
               show_progress: bool = True, measure_weights: bool = True) -> RecipeRun:
    """Run (or with ``resume`` continue) ``recipe`` into ``out``. ``max_steps`` / ``time_limit_min`` stop
    the run, resumably, after that many optimiser steps (all stages) / that much wall time. The exported
    weights are then measured on the validation split (:func:`model.release.measure`, unless
    ``measure_weights`` is false or the recipe holds out nothing) and the figures join the manifest."""
    out = Path(out)
    ds = data if isinstance(data, PointDataset) else load_dataset(data)
    resolved = json.loads(json.dumps(recipe.resolved(ds.sha256)))      # as the file holds it: lists
    resolved["data"]["path"] = ds.source
    _check_out(out, resolved, resume)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / RESOLVED_FILE, resolved)
    t0, done, records = time.monotonic(), 0, []
    dev = pick_device(device)
    for i, stage in enumerate(recipe.stages):
        stage_dir = recipe.stage_dir(out, i)
        marker = stage_dir / STAGE_DONE_FILE
        if marker.is_file():
            log.info("stage %s: finished already (%s)", stage_dir.name, marker)
            records.append(json.loads(marker.read_text()))
            done += stage.steps
            continue
        stop = _stop_before(stage, done, max_steps, time_limit_min, t0)
        if stop is not None:
            return RecipeRun(stop, done, None)
        if stage.kind == "average":
            result = _run_average(recipe, i, out)
        else:
            left_min = None if time_limit_min is None else time_limit_min - (time.monotonic() - t0) / 60
            left_steps = None if max_steps is None or max_steps - done >= stage.steps else max_steps - done
            tc = dataclasses.replace(
                stage.train, n_train=recipe.n_train, holdout=recipe.holdout, time_limit_min=left_min,
                max_steps=left_steps,
                init_from=str(recipe.stage_dir(out, i - 1) / CHECKPOINT_FILE) if i else None)
            trainer = Trainer(dataclasses.replace(recipe.model, loss=stage.loss), tc, ds, stage_dir, device=device,
                              resume=resume and (stage_dir / CHECKPOINT_FILE).is_file(),
                              show_progress=show_progress, geometry_cache=out / GEOMETRY_FILE)
            dev = trainer.device
            if tc.max_steps is not None and trainer.step >= tc.max_steps:
                return RecipeRun("max_steps", done + trainer.step, None)
            summary = trainer.run()
            if summary["stopped"] != "completed":
                log.info("stage %s stopped (%s) at step %d", stage.name, summary["stopped"], summary["steps"])
                return RecipeRun(summary["stopped"], done + summary["steps"], None)
            result = {"elapsed_s": summary["elapsed_s"], "device": summary["device"]}
        record = {"stage": stage_dir.name, "kind": stage.kind, "steps": stage.steps, **result}
        _write_json(marker, record)
        records.append(record)
        done += stage.steps
    flat: dict[str, Any] = {"name": recipe.name, "sha256": recipe.sha256, "data_sha256": ds.sha256,
                            "holdout": recipe.holdout}
    for r in records:
        flat[f"steps.{r['stage']}"] = r["steps"]
        flat[f"wall_s.{r['stage']}"] = r["elapsed_s"]
    flat["wall_h"] = round(sum(r["elapsed_s"] for r in records) / 3600, 2)
    backbone = PRETRAINED.get(recipe.model.image.arch)
    if backbone is not None and any(s.train.pretrained_image for s in recipe.stages if s.train):
        flat["backbone_sha256"] = backbone.sha256
    flat.update(device=_device_string(dev), cpu=cpu_name(), torch=torch.__version__)
    weights = _export(recipe, out, flat)
    if recipe.holdout and measure_weights:
        from .release import measure
        from .weights import update_manifest

        flat.update(measure(weights, ds, recipe.holdout, progress=show_progress))
        update_manifest(weights, {"recipe": flat})
    return RecipeRun("completed", done, weights)
