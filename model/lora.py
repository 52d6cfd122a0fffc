"""LoRA fine-tuning of a DecoderLM: choose modules, freeze the base, save/load PEFT adapters, merge.

Names. Modules are addressed by their HF names, the ones model/checkpoint/hf.py maps
(`variable_map`): model.layers.{i}.self_attn.{q_proj | q_a_proj | q_b_proj | kv_a_proj_with_mqa |
kv_b_proj | o_proj | k_proj | v_proj} and model.layers.{i}.mlp.{gate_proj | up_proj | down_proj}
(dense layers) or model.layers.{i}.mlp.shared_experts.{…} (shared experts count as MLP). A target
in `LoraSpec.target_modules` is the last name component, as PEFT matches them; "all-linear"
means every adaptable module. Not adaptable: the router gate (the router reads its kernel
directly, in fp32), the output head, and the MTP modules (model.layers.{L+k}.*: transformers does
not load them, so a PEFT adapter for them would attach to nothing).

Routed experts (`include_experts=True`): model.layers.{i}.mlp.experts.{j}.{gate_proj | up_proj |
down_proj} are adapted too when those names, the "mlp" group or all-linear are targeted. They are
not Linear layers but slices of MoE's stacked (E, …) weights, so their adapters are stacked too:
MoE (model/layers/moe.py) holds A (E, in, r), B (E, r, out) per adapted projection and folds
W + s·A·B into the stack before its per-expert matmuls; here each expert appears as an
`ExpertProjection` view with its own HF name. A layer's experts are adapted all together (a
projection's adapter is one stack), and adapter dropout does not apply to them (see moe.py).

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
(in, out), so A and B are stored transposed, as the HF importer does for kernels. Routed
experts are written per expert (…mlp.experts.{j}.gate_proj.lora_A.weight, slices of the
stacks), the transformers-4 per-expert module layout. One PEFT caveat (PEFT 0.21,
transformers 5): for MoE models such as DeepSeek-V3, PEFT rewrites gate_proj / up_proj /
down_proj targets onto the fused routed experts (its migration of transformers-4 adapters), so
neither the dense-layer / shared-expert MLP adapters nor the per-expert ones are loaded there;
attention adapters load as written. For such adapters hand over the merged export instead.

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
LM_HEAD = "lm_head"
ADAPTABLE = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
             "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj", LM_HEAD)
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
        if not isinstance(self.include_experts, bool):
            raise ConfigError(f"LoraSpec.include_experts: expected true or false, got {self.include_experts!r}")
        if self.include_experts and not set(self.target_modules) & {ALL_LINEAR, "mlp", *GROUPS["mlp"]}:
            raise ConfigError(f"LoraSpec.include_experts: the routed experts have only gate_proj / "
                              f"up_proj / down_proj, and target_modules {list(self.target_modules)} "
                              f"names none of them (add 'mlp' or the projections)")

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.use_rslora else self.rank)


@dataclass
class _State:
    spec: LoraSpec
    modules: list[str]
    trainable_before: list[tuple[object, bool]]     # (variable, trainable) before apply_lora


_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class ExpertProjection:
    """Routed expert `index`'s `proj` ("gate" | "up" | "down") inside MoE `moe`: a view of one
    slice of the stacked weights and adapters (the adapter variables belong to the MoE)."""
    moe: object
    proj: str
    index: int

    @property
    def in_features(self) -> int:
        return self.moe.expert_dims(self.proj)[0]

    @property
    def out_features(self) -> int:
        return self.moe.expert_dims(self.proj)[1]

    @property
    def has_lora(self) -> bool:
        return self.proj in self.moe.expert_lora_projections


# ---------------------------------------------------------------------- module discovery
def adaptable_modules(model, include_experts: bool = False) -> OrderedDict[str, object]:
    """HF module name -> Linear (or ExpertProjection, with include_experts) for every module LoRA
    may adapt, in checkpoint order."""
    from model.checkpoint.hf import variable_map
    from model.layers.linear import Linear
    from model.layers.moe import EXPERT_PROJECTIONS, MoE
    owner = {id(layer.kernel): layer for layer in model._flatten_layers() if isinstance(layer, Linear)}
    stacks = {id(getattr(layer, f"experts_{p}")): (layer, p) for layer in model._flatten_layers()
              if isinstance(layer, MoE) for p in EXPERT_PROJECTIONS}
    n_main = model.cfg.num_hidden_layers
    out: OrderedDict[str, object] = OrderedDict()
    for key, (var, kind, expert) in variable_map(model).items():
        if kind not in ("linear", "expert") or not key.endswith(".weight"):
            continue
        name = key[:-len(".weight")]
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m is None or int(m.group(1)) >= n_main:      # lm_head / MTP modules
            continue
        if name.rsplit(".", 1)[-1] not in ADAPTABLE:    # router gate, eh_proj
            continue
        if kind == "linear":
            out[name] = owner[id(var)]
        elif include_experts:
            moe, proj = stacks[id(var)]
            out[name] = ExpertProjection(moe, proj, int(expert))
    if model.lm_head is not None:
        # The output head (untied only): adapted only when named, never by all-linear (PEFT's rule).
        out[LM_HEAD] = model.lm_head
    return out


def _is_expert(module) -> bool:
    return isinstance(module, ExpertProjection)


def _resolve(model, spec: LoraSpec) -> list[str]:
    modules = adaptable_modules(model, include_experts=spec.include_experts)
    present = sorted({n.rsplit(".", 1)[-1] for n in modules}, key=ADAPTABLE.index)
    if ALL_LINEAR in spec.target_modules:
        return [n for n in modules if n != LM_HEAD or LM_HEAD in spec.target_modules]
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
    """HF module name -> Linear / ExpertProjection for the modules that currently carry an
    adapter, in checkpoint order."""
    return OrderedDict((n, m) for n, m in adaptable_modules(model, include_experts=True).items()
                       if m.has_lora)


def _adapted_moes(modules) -> list:
    """The distinct MoE layers among `modules`' ExpertProjections, in order."""
    seen: dict[int, object] = {}
    for m in modules:
        if _is_expert(m):
            seen.setdefault(id(m.moe), m.moe)
    return list(seen.values())


def lora_variables(model) -> list:
    """Every adapter variable: each Linear's lora_A / lora_B and each MoE's stacked expert
    adapters (A (E, in, r), B (E, r, out) per adapted projection)."""
    mods = list(lora_modules(model).values())
    out = [v for m in mods if not _is_expert(m) for v in (m.lora_a, m.lora_b)]
    for moe in _adapted_moes(mods):
        out += [v for p in moe.expert_lora_projections for v in moe.expert_lora(p)]
    return out


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
    modules = adaptable_modules(model, include_experts=True)
    before = [(v, v.trainable) for v in model.weights]
    experts: dict[int, tuple[object, list[str], int]] = {}    # id(MoE) -> (MoE, projections, first i)
    for i, name in enumerate(names):
        mod = modules[name]
        if _is_expert(mod):
            moe, projs, _ = experts.setdefault(id(mod.moe), (mod.moe, [], i))
            if mod.proj not in projs:
                projs.append(mod.proj)
            continue
        seed = None if spec.seed is None else spec.seed + i
        mod.enable_lora(spec.rank, spec.alpha, spec.dropout, spec.use_rslora, seed=seed)
    for moe, projs, i in experts.values():
        # one call per MoE: its adapted projections' stacks are attached (and frozen) together
        moe.enable_expert_lora(spec.rank, spec.alpha, spec.use_rslora, projections=tuple(projs),
                               seed=None if spec.seed is None else spec.seed + i)
    if spec.freeze_rest:
        adapters = {id(v) for v in lora_variables(model)}
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
    """Fold every adapter into its kernel (W ← W + s·A·B; routed experts: into their stacks) and
    remove the adapters; trainability returns to what it was before apply_lora. Returns the
    merged module names."""
    mods = lora_modules(model)
    if not mods:
        raise ConfigError("merge_lora: the model has no LoRA adapters")
    for moe in _adapted_moes(mods.values()):
        moe.merge_expert_lora()
    for lin in mods.values():
        if not _is_expert(lin):
            lin.merge_lora()
    merged = list(mods)
    st = _STATE.pop(model, None)
    if st is not None:
        for v, t in st.trainable_before:
            v.trainable = t
    _forget_compiled(model)
    return merged


def lora_parameter_counts(model) -> dict[str, int]:
    """{'trainable', 'total', 'lora'} parameter counts (total includes the adapters)."""
    size = lambda vs: int(sum(int(np.prod(v.shape)) for v in vs))  # noqa: E731
    return {"trainable": size(model.trainable_weights), "total": size(model.weights),
            "lora": size(lora_variables(model))}


# ---------------------------------------------------------------------- PEFT files
def adapter_tensors(model) -> OrderedDict[str, np.ndarray]:
    """PEFT-named float32 tensors: lora_A (r, in), lora_B (out, r) per adapted module (per
    routed expert: slice j of the MoE's stacks)."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    stacks: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    for name, mod in lora_modules(model).items():
        if _is_expert(mod):
            key = (id(mod.moe), mod.proj)
            if key not in stacks:
                stacks[key] = tuple(v.numpy() for v in mod.moe.expert_lora(mod.proj))
            a, b = (s[mod.index] for s in stacks[key])                 # (in, r), (r, out)
        else:
            a, b = mod.lora_a.numpy(), mod.lora_b.numpy()
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a.T, np.float32)
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b.T, np.float32)
    return out


def set_adapter_values(model, values: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Assign adapters by HF module name: values[name] = (A (in, r), B (r, out)) in our kernel
    layout (the transpose of PEFT's). Every routed expert of an adapted MoE projection must be
    given (its adapter is one stack). The modules must already carry adapters."""
    mods = lora_modules(model)
    missing = [n for n in values if n not in mods]
    if missing:
        raise ConfigError(f"set_adapter_values: module '{missing[0]}' carries no adapter")
    stacks: dict[tuple[int, str], tuple[object, str, dict]] = {}
    for name, (a, b) in values.items():
        mod = mods[name]
        if _is_expert(mod):
            stacks.setdefault((id(mod.moe), mod.proj), (mod.moe, mod.proj, {}))[2][mod.index] = (a, b)
        else:
            mod.lora_a.assign(np.asarray(a, np.float32))
            mod.lora_b.assign(np.asarray(b, np.float32))
    for moe, proj, per in stacks.values():
        if sorted(per) != list(range(moe.n_routed_experts)):
            absent = sorted(set(range(moe.n_routed_experts)) - set(per))
            raise ConfigError(f"set_adapter_values: {moe.name} {proj}_proj: experts {absent[:4]} missing "
                              f"(a layer's routed experts are adapted together)")
        va, vb = moe.expert_lora(proj)
        va.assign(np.stack([np.asarray(per[j][0], np.float32) for j in range(moe.n_routed_experts)]))
        vb.assign(np.stack([np.asarray(per[j][1], np.float32) for j in range(moe.n_routed_experts)]))


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
    modules = adaptable_modules(model, include_experts=True)
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
    # A layer's routed experts share one stacked adapter per projection: all or none of them.
    units: dict[tuple[int, str], list[int]] = {}
    for n in names:
        if _is_expert(modules[n]):
            units.setdefault((id(modules[n].moe), modules[n].proj), []).append(modules[n].index)
    for n, mod in modules.items():
        if _is_expert(mod) and (id(mod.moe), mod.proj) in units and n not in pairs:
            raise CheckpointError(f"{wpath}: missing tensor '{PEFT_PREFIX}{n}.lora_A.weight': the file "
                                  f"adapts {len(units[(id(mod.moe), mod.proj)])} of this layer's "
                                  f"{mod.moe.n_routed_experts} routed experts' {mod.proj}_proj, and "
                                  f"seekline adapts a layer's routed experts all together")
    spec = LoraSpec(rank=rank, alpha=float(cfg["lora_alpha"]),
                    dropout=float(cfg.get("lora_dropout") or 0.0),
                    target_modules=tuple(sorted({n.rsplit(".", 1)[-1] for n in names},
                                                key=ADAPTABLE.index)),
                    include_experts=bool(units),
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
    set_adapter_values(model, {n: (f.get_f32(pairs[n]["A"]).T, f.get_f32(pairs[n]["B"]).T) for n in names})
    _forget_compiled(model)
    return names
