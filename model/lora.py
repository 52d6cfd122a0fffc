"""LoRA fine-tuning of a DecoderLM: choose modules, freeze the base, save/load PEFT adapters, merge.

Names. Modules are addressed by their HF names, the ones model/checkpoint/hf.py maps
(`variable_map`): model.layers.{i}.self_attn.{q_proj | q_a_proj | q_b_proj | kv_a_proj_with_mqa |
kv_b_proj | o_proj | k_proj | v_proj} and model.layers.{i}.mlp.{gate_proj | up_proj | down_proj}
(dense layers) or model.layers.{i}.mlp.shared_experts.{…} (shared experts count as MLP). A target
in `LoraSpec.target_modules` is the last name component, as PEFT matches them; "all-linear"
means every adaptable module. Not adaptable: the router gate (the router reads its kernel
directly, in fp32), the output head, and the MTP modules (model.layers.{L+k}.*: transformers does
not load them, so a PEFT adapter for them would attach to nothing). Routed experts are stacked
(E, …) tensors inside MoE, not Linear layers: `include_experts=True` is refused until MoE has a
hook for per-expert adapters.

Scaling. y = x·W (+ b) + s·dropout(x)·A·B with s = alpha / r (rsLoRA: alpha / √r); A starts as
PEFT's kaiming-uniform, B at zero, so apply_lora leaves the model's outputs unchanged. Dropout
acts only in training calls (Keras `training=True` reaching the Linear). See
model/layers/linear.py.

Freezing. The adapted kernels/biases are always frozen; with `freeze_rest` every other variable
too (embeddings, norms, head, router, MTP), so `model.trainable_variables` is exactly the
adapters and the training engine trains only them. The MoE routing bias is not trained by
gradients anyway; the trainer's aux-loss-free bias update is a separate switch
(TrainerConfig.bias_update_gamma: set it to 0 to keep the base model's routing).

Files (PEFT layout, so `PeftModel.from_pretrained(transformers_model, dir)` loads them):
adapter_model.safetensors with `base_model.model.<module>.lora_A.weight` (r, in) and
`….lora_B.weight` (out, r) in float32, and adapter_config.json (peft_type LORA, r, lora_alpha,
lora_dropout, target_modules, bias "none", task_type CAUSAL_LM, use_rslora, …). Our kernels are
(in, out), so A and B are stored transposed, as the HF importer does for kernels. One PEFT caveat
(PEFT 0.21, transformers 5): for MoE models such as DeepSeek-V3, PEFT rewrites gate_proj /
up_proj / down_proj targets onto the fused routed experts (its migration of transformers-4
adapters), so the dense-layer and shared-expert MLP adapters are not loaded there; attention
adapters load as written. For such adapters hand over the merged export instead.

Merging. `merge_lora` sets W ← W + s·A·B (float64, rounded once to float32) and removes the
adapters; the model is then a plain DecoderLM whose `save_hf_checkpoint` export any HF tool
loads, with the same logits as the adapted model (tests/fixtures/lora, checked against
transformers and PEFT).

Compiled functions. The inference forward and the generation steps are tf.functions cached per
model; attaching, loading or merging adapters drops those caches so the next call retraces
with (or without) the adapters. The MLA absorbed decode (generation with absorb=True) reads
kv_b_proj's kernel directly and does not see an unmerged kv_b_proj adapter: merge first, or
leave kv_b_proj out of the targets, when generating with absorb.
"""
from __future__ import annotations

import json
import os
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from model.errors import CheckpointError, ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
ALL_LINEAR = "all-linear"
# Module names LoRA may target (last component of the HF module name).
ADAPTABLE = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
             "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")
# Target groups: every attention projection / every MLP projection the model has.
GROUPS = {"attention": ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
                        "k_proj", "v_proj"),
          "mlp": ("gate_proj", "up_proj", "down_proj")}
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how. rank r, alpha (scale alpha/r, or alpha/√r with use_rslora), dropout
    on the adapter input in training; target_modules: module names (see the module docstring) or
    ("all-linear",)."""
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (ALL_LINEAR,)
    include_experts: bool = False
    freeze_rest: bool = True
    use_rslora: bool = False
    seed: int | None = field(default=None, compare=False)   # A's initialiser / dropout stream

    def __post_init__(self):
        if isinstance(self.target_modules, str) or not isinstance(self.target_modules, (tuple, list)):
            raise ConfigError(f"LoraSpec.target_modules: expected a list of module names, got "
                              f"{self.target_modules!r}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoraSpec.rank: expected a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"LoraSpec.alpha: expected a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraSpec.dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError(f"LoraSpec.target_modules: expected non-empty module names, got "
                              f"{list(self.target_modules)!r}")
        if self.include_experts:
            raise ConfigError("LoraSpec.include_experts: LoRA on routed experts is not supported: "
                              "they are stacked (E, ...) tensors inside MoE (model/layers/moe.py), "
                              "not Linear layers; adapt the shared experts and attention instead")

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.use_rslora else self.rank)


@dataclass
class _State:
    spec: LoraSpec
    modules: list[str]
    trainable_before: list[tuple[object, bool]]     # (variable, trainable) before apply_lora


_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------- module discovery
def adaptable_modules(model) -> OrderedDict[str, object]:
    """HF module name -> Linear for every module LoRA may adapt, in checkpoint order."""
    from model.checkpoint.hf import variable_map
    from model.layers.linear import Linear
    owner = {id(layer.kernel): layer for layer in model._flatten_layers() if isinstance(layer, Linear)}
    n_main = model.cfg.num_hidden_layers
    out: OrderedDict[str, object] = OrderedDict()
    for key, (var, kind, _) in variable_map(model).items():
        if kind != "linear" or not key.endswith(".weight"):
            continue
        name = key[:-len(".weight")]
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m is None or int(m.group(1)) >= n_main:      # lm_head / MTP modules
            continue
        if name.rsplit(".", 1)[-1] not in ADAPTABLE:    # router gate, eh_proj
            continue
        out[name] = owner[id(var)]
    return out


def _resolve(model, spec: LoraSpec) -> list[str]:
    modules = adaptable_modules(model)
    present = sorted({n.rsplit(".", 1)[-1] for n in modules}, key=ADAPTABLE.index)
    if ALL_LINEAR in spec.target_modules:
        return list(modules)
    # Group names expand to what this architecture has (MLA: q_a/q_b/kv_a/kv_b/o; GQA: q/k/v/o),
    # so one config serves both families.
    targets = set()
    for t in spec.target_modules:
        targets |= {n for n in GROUPS[t] if n in present} if t in GROUPS else {t}
    unknown = [t for t in spec.target_modules if t not in GROUPS and t not in present]
    if unknown:
        raise ConfigError(f"LoraSpec.target_modules: {unknown} match no module of this "
                          f"{model.cfg.model_type} model; its adaptable modules are {present} "
                          f"(or '{ALL_LINEAR}', {', '.join(repr(g) for g in GROUPS)})")
    return [n for n in modules if n.rsplit(".", 1)[-1] in targets]


def lora_modules(model) -> OrderedDict[str, object]:
    """HF module name -> Linear for the modules that currently carry an adapter."""
    return OrderedDict((n, m) for n, m in adaptable_modules(model).items() if m.has_lora)


# ---------------------------------------------------------------------- apply / merge
def _forget_compiled(model) -> None:
    """Drop the model's cached tf.functions: a trace made before adapters were attached (or
    after they were removed) would keep computing without (with) them."""
    from model.decoder import _INFERENCE_FORWARD
    from model.generation.generate import _FNS
    _INFERENCE_FORWARD.pop(model, None)
    _FNS.pop(model, None)


def _attach(model, names: list[str], spec: LoraSpec) -> list[str]:
    if model in _STATE or lora_modules(model):
        raise ConfigError("apply_lora: this model already has LoRA adapters "
                          "(merge_lora or a fresh model first)")
    modules = adaptable_modules(model)
    before = [(v, v.trainable) for v in model.weights]
    for i, name in enumerate(names):
        seed = None if spec.seed is None else spec.seed + i
        modules[name].enable_lora(spec.rank, spec.alpha, spec.dropout, spec.use_rslora, seed=seed)
    if spec.freeze_rest:
        adapters = {id(v) for n in names for v in (modules[n].lora_a, modules[n].lora_b)}
        for v in model.weights:
            if id(v) not in adapters:
                v.trainable = False
    _STATE[model] = _State(spec, list(names), before)
    _forget_compiled(model)
    return list(names)


def apply_lora(model, spec: LoraSpec) -> list[str]:
    """Attach adapters to the modules `spec` selects; returns their HF module names.

    Raises ConfigError for a target that matches nothing (naming the modules that exist) or a
    model that already has adapters."""
    if not isinstance(spec, LoraSpec):
        raise ConfigError(f"apply_lora: expected a LoraSpec, got {type(spec).__name__}")
    return _attach(model, _resolve(model, spec), spec)


def lora_spec(model) -> LoraSpec | None:
    """The spec the model's adapters were attached with (None without adapters)."""
    st = _STATE.get(model)
    return st.spec if st else None


def merge_lora(model) -> list[str]:
    """Fold every adapter into its kernel (W ← W + s·A·B) and remove the adapters; trainability
    returns to what it was before apply_lora. Returns the merged module names."""
    merged = []
    for name, lin in lora_modules(model).items():
        lin.merge_lora()
        merged.append(name)
    if not merged:
        raise ConfigError("merge_lora: the model has no LoRA adapters")
    st = _STATE.pop(model, None)
    if st is not None:
        for v, t in st.trainable_before:
            v.trainable = t
    _forget_compiled(model)
    return merged


def lora_parameter_counts(model) -> dict[str, int]:
    """{'trainable', 'total', 'lora'} parameter counts (total includes the adapters)."""
    size = lambda vs: int(sum(int(np.prod(v.shape)) for v in vs))  # noqa: E731
    adapters = [v for m in lora_modules(model).values() for v in (m.lora_a, m.lora_b)]
    return {"trainable": size(model.trainable_weights), "total": size(model.weights),
            "lora": size(adapters)}


# ---------------------------------------------------------------------- PEFT files
def adapter_tensors(model) -> OrderedDict[str, np.ndarray]:
    """PEFT-named float32 tensors: lora_A (r, in), lora_B (out, r) per adapted module."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, lin in lora_modules(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(lin.lora_a.numpy().T, np.float32)
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(lin.lora_b.numpy().T, np.float32)
    return out


def peft_config(spec: LoraSpec, modules: list[str], base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json content. target_modules lists the short names actually adapted (PEFT
    matches them as name suffixes, which selects the same modules in the transformers model)."""
    targets = sorted({n.rsplit(".", 1)[-1] for n in modules}, key=ADAPTABLE.index)
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout, "target_modules": targets, "bias": "none",
            "use_rslora": spec.use_rslora, "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
            "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False,
            "base_model_name_or_path": base_model_name_or_path}


def save_adapters(model, out_dir: str, base_model_name_or_path: str | None = None) -> str:
    """Write the adapters alone (PEFT layout) to out_dir, atomically (a staged folder renamed
    into place). Returns out_dir."""
    from safetensors.numpy import save

    from model.checkpoint.hf import _atomic_dir
    st = _STATE.get(model)
    tensors = adapter_tensors(model)
    if st is None or not tensors:
        raise ConfigError(f"save_adapters({out_dir}): the model has no LoRA adapters")
    with _atomic_dir(out_dir) as tmp:
        # save() + a plain open(): safetensors' save_file creates the file 0600, where every
        # other output gets the umask's permissions (model/checkpoint/permissions_test.py).
        with open(os.path.join(tmp, ADAPTER_WEIGHTS), "wb") as fh:
            fh.write(save(dict(tensors), metadata={"format": "pt"}))
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(peft_config(st.spec, st.modules, base_model_name_or_path), f, indent=2,
                      sort_keys=True)
    return out_dir


def _read_peft_config(path: str) -> dict:
    cpath = os.path.join(path, ADAPTER_CONFIG)
    if not os.path.isfile(cpath):
        raise CheckpointError(f"{path}: {ADAPTER_CONFIG} not found (not a PEFT adapter folder)")
    try:
        with open(cpath, encoding="utf-8") as f:
            cfg = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{cpath}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cpath}: expected a JSON object")
    checks = [("peft_type", cfg.get("peft_type") == "LORA", "LORA"),
              ("bias", cfg.get("bias", "none") == "none", "'none'"),
              ("use_dora", not cfg.get("use_dora", False), "false"),
              ("fan_in_fan_out", not cfg.get("fan_in_fan_out", False), "false"),
              ("rank_pattern", not cfg.get("rank_pattern"), "empty"),
              ("alpha_pattern", not cfg.get("alpha_pattern"), "empty"),
              ("modules_to_save", not cfg.get("modules_to_save"), "null")]
    for fld, ok, want in checks:
        if not ok:
            raise ConfigError(f"{cpath}: field '{fld}' is {cfg.get(fld)!r}; seekline loads plain "
                              f"LoRA adapters only ({fld} must be {want})")
    for fld in ("r", "lora_alpha"):
        v = cfg.get(fld)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"{cpath}: field '{fld}' must be a positive number, got {v!r}")
    return cfg


def load_adapters(model, path: str) -> list[str]:
    """Load a PEFT LoRA adapter folder onto `model`; returns the adapted module names.

    A model without adapters gets them attached (rank/alpha/dropout/rsLoRA from the config, the
    modules the file has weights for, the rest frozen); a model that already has adapters (e.g.
    built with apply_lora for training) must have the same rank, scale and modules. Everything is
    validated before anything is assigned: a module the model does not have, a missing tensor,
    or a shape that does not fit is a CheckpointError naming the key — the usual sign of an
    adapter made for a different base model.
    """
    from model.checkpoint.safetensors_io import SafetensorsFile
    cfg = _read_peft_config(path)
    wpath = os.path.join(path, ADAPTER_WEIGHTS)
    if not os.path.isfile(wpath):
        raise CheckpointError(f"{path}: {ADAPTER_WEIGHTS} not found")
    f = SafetensorsFile(wpath)
    rank = int(cfg["r"])
    pairs: dict[str, dict[str, str]] = {}
    for key in f.keys():
        m = _KEY.match(key)
        if m is None:
            raise CheckpointError(f"{wpath}: unexpected tensor '{key}' (a LoRA adapter holds only "
                                  f"{PEFT_PREFIX}<module>.lora_A.weight / .lora_B.weight)")
        pairs.setdefault(m.group("module"), {})[m.group("which")] = key
    if not pairs:
        raise CheckpointError(f"{wpath}: no LoRA tensors")
    modules = adaptable_modules(model)
    # Names first, then shapes: a foreign adapter is reported by a module it names, not by the
    # first same-named module whose size differs.
    foreign = [n for n in pairs if n not in modules]
    if foreign:
        raise CheckpointError(f"{wpath}: adapter for module '{foreign[0]}' (and {len(foreign) - 1} "
                              f"more), which this {model.cfg.model_type} model does not have "
                              f"(adapter made for a different base model?)")
    for name, ab in pairs.items():
        for which in "AB":
            if which not in ab:
                raise CheckpointError(f"{wpath}: missing tensor '{PEFT_PREFIX}{name}.lora_{which}.weight'")
        lin = modules[name]
        for which, want in (("A", (rank, lin.in_features)), ("B", (lin.out_features, rank))):
            got = tuple(f.shape(ab[which]))
            if got != want:
                raise CheckpointError(f"{wpath}: tensor '{ab[which]}' has shape {list(got)}, this "
                                      f"model needs {list(want)} (r={rank}; adapter made for a "
                                      f"different base model?)")
    names = [n for n in modules if n in pairs]             # checkpoint order
    spec = LoraSpec(rank=rank, alpha=float(cfg["lora_alpha"]),
                    dropout=float(cfg.get("lora_dropout") or 0.0),
                    target_modules=tuple(sorted({n.rsplit(".", 1)[-1] for n in names},
                                                key=ADAPTABLE.index)),
                    use_rslora=bool(cfg.get("use_rslora", False)))
    st = _STATE.get(model)
    if st is None:
        _attach(model, names, spec)
    else:
        have = list(lora_modules(model))
        if st.spec.rank != spec.rank or not np.isclose(st.spec.scale, spec.scale) or have != names:
            extra = sorted(set(have) ^ set(names))[:3]
            raise CheckpointError(f"{path}: adapter (r={spec.rank}, scale={spec.scale:g}, "
                                  f"{len(names)} modules) does not fit the model's adapters "
                                  f"(r={st.spec.rank}, scale={st.spec.scale:g}, {len(have)} modules"
                                  + (f"; differing: {extra}" if extra else "") + ")")
    for name in names:
        lin = modules[name]
        lin.lora_a.assign(f.get_f32(pairs[name]["A"]).T)
        lin.lora_b.assign(f.get_f32(pairs[name]["B"]).T)
    _forget_compiled(model)
    return names
