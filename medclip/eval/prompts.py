"""Class files and prompt embeddings for zero-shot classification.

A class file (YAML, see ``recipes/classes/``) describes each class or condition by one or more
prompts, optionally wrapped in templates::

    task: single                      # single (softmax over classes) or multi (one yes/no per condition)
    templates: ["a chest x-ray showing {}", "{}"]
    label_column: finding             # single-label manifests: the column holding the class value
    classes:
      NORMAL:
        prompts: ["no acute cardiopulmonary process", "normal lungs"]
        values: [NORMAL]              # manifest values / folder names of this class (default: its name)
      PNEUMONIA: ["pneumonia", "lobar consolidation"]   # shorthand: a list of prompts

Multi-label files add ``negative_templates`` (default ``["no {}"]``) or per-condition ``negatives``; a
condition marked ``no_finding: true`` is scored against the average of all the other conditions'
prompts ("normal" vs "any finding") instead of the nonsense "no no finding".

Prompt ensembling follows the CLIP paper: every prompt × template is encoded, L2-normalised, averaged
and renormalised. Prompt embeddings are cached on disk per model (key: :func:`tower_hash` of the
text tower and the exact texts), so re-running on new images never re-encodes prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import from_dict, load_yaml
from ..defaults import TEXT_BATCH_SIZE
from ..errors import ConfigError

TASKS = ("single", "multi")


@dataclass
class ClassSpec:
    """One class (single-label) or condition (multi-label).

    Attributes:
        prompts: descriptions of the class; each is wrapped in every template.
        templates: override of the file's templates for this class.
        values: single-label: manifest values or folder names meaning this class (default: the name).
        filename_contains: folder input: the file name must contain one of these (case-insensitive),
            e.g. ``bacteria`` / ``virus`` for the 3-class Kermany task.
        column: multi-label: the manifest column with this condition's 1/0 label (default: the name).
        negatives: multi-label: explicit negative prompts (templates are not applied to them).
        no_finding: multi-label: this is the "No Finding" class (see the module docstring).
        description: free text for humans.
    """

    prompts: list = field(default_factory=list)
    templates: list | None = None
    values: list | None = None
    filename_contains: list | None = None
    column: str | None = None
    negatives: list | None = None
    no_finding: bool = False
    description: str = ""


@dataclass
class ClassFile:
    """A whole class file (see the module docstring).

    Attributes:
        classes: class name -> :class:`ClassSpec` (in file order).
        task: ``single`` or ``multi``.
        templates: templates with one ``{}``, applied to every prompt.
        negative_templates: multi-label: templates turning a prompt into its negation.
        label_column: single-label: the manifest column holding class values.
        patient_regex: folder input: regex whose first match in the file name is the patient key
            (for the patient-level bootstrap); default: one patient per file.
        uncertain: multi-label: what CheXpert's uncertain label (-1) means: ``ones``, ``zeros`` or
            ``ignore`` (unknown, left out of that condition); see :mod:`medclip.data.labels`.
        description: free text for humans.
    """

    classes: dict = field(default_factory=dict)
    task: str = "single"
    templates: list = field(default_factory=lambda: ["{}"])
    negative_templates: list = field(default_factory=lambda: ["no {}"])
    label_column: str = "label"
    patient_regex: str | None = None
    uncertain: str = "ignore"
    description: str = ""

    @property
    def names(self) -> list[str]:
        return list(self.classes)


def parse_class_file(data: dict, where: str = "classes file") -> ClassFile:
    """Build a :class:`ClassFile` from a dict, refusing unknown keys and malformed prompts."""
    data = dict(data)
    raw = data.pop("classes", None)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: 'classes' must be a non-empty mapping of class name -> prompts")
    cf = _strict(ClassFile, data, "", where)
    if cf.task not in TASKS:
        raise ConfigError(f"{where}: task must be one of {TASKS}, got '{cf.task}'")
    for name, spec in raw.items():
        spec = {"prompts": spec} if isinstance(spec, (list, str)) else spec
        if isinstance(spec.get("prompts"), str):
            spec = {**spec, "prompts": [spec["prompts"]]}
        cf.classes[str(name)] = _strict(ClassSpec, spec, f"classes.{name}", where)
    _validate(cf, where)
    return cf


def _strict(cls, data, prefix: str, where: str):
    """:func:`medclip.config.from_dict` with the file name in front of its one-line message."""
    try:
        return from_dict(cls, data, prefix)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _validate(cf: ClassFile, where: str) -> None:
    from ..data.labels import check_policy

    check_policy(cf.uncertain, f"{where}: uncertain")
    if cf.task == "single" and len(cf.classes) < 2:
        raise ConfigError(f"{where}: a single-label task needs at least 2 classes, got {cf.names}")
    for name, spec in cf.classes.items():
        if not spec.prompts or not all(isinstance(p, str) and p.strip() for p in spec.prompts):
            raise ConfigError(f"{where}: classes.{name}.prompts must be a non-empty list of non-empty strings")
        for key in ("templates", "values", "filename_contains", "negatives"):
            value = getattr(spec, key)
            if value is not None and (not isinstance(value, list) or not value):
                raise ConfigError(f"{where}: classes.{name}.{key} must be a non-empty list")
        if cf.task == "single" and (spec.negatives or spec.no_finding):
            raise ConfigError(f"{where}: classes.{name}: 'negatives'/'no_finding' only apply to task: multi")
        for template in (spec.templates or cf.templates) + (cf.negative_templates if cf.task == "multi" else []):
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ConfigError(f"{where}: template {template!r} must contain exactly one '{{}}'")
    if sum(s.no_finding for s in cf.classes.values()) > 1:
        raise ConfigError(f"{where}: at most one class can be marked no_finding")
    if any(s.no_finding for s in cf.classes.values()) and len(cf.classes) < 2:
        raise ConfigError(f"{where}: a no_finding class needs other conditions to be contrasted with")


def load_class_file(path: str | os.PathLike) -> ClassFile:
    """Read and validate a class file (YAML, ``yaml.safe_load``); unknown keys raise a one-line error."""
    return parse_class_file(load_yaml(path), str(path))


def positive_texts(cf: ClassFile, name: str) -> list[str]:
    """Every template applied to every prompt of class ``name``."""
    spec = cf.classes[name]
    return [t.format(p) for p in spec.prompts for t in (spec.templates or cf.templates)]


def negative_texts(cf: ClassFile, name: str) -> list[str]:
    """The negated prompts of a multi-label condition (empty for a no_finding class without negatives)."""
    spec = cf.classes[name]
    if spec.negatives:
        return list(spec.negatives)
    if spec.no_finding:
        return []
    return [t.format(p) for p in spec.prompts for t in cf.negative_templates]


def ensemble(embeddings: torch.Tensor) -> torch.Tensor:
    """CLIP prompt ensembling: mean of the L2-normalised embeddings ``(T, D)``, renormalised -> ``(D,)``."""
    return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(0), dim=-1)


_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
TOWERS = {"visual": "vision", "text": "text"}  # module attribute -> its config section


def tower_hash(model, tower: str) -> str:
    """SHA-256 of one tower's config and weights: ``visual`` keys the image-feature cache, ``text`` the prompt cache.

    Kept per model object and recomputed whenever a weight of that tower changed (in-place updates bump
    a tensor's version counter), so a hash is never stale.
    """
    if tower not in TOWERS:
        raise ConfigError(f"tower must be one of {tuple(TOWERS)}, got '{tower}'")
    state = getattr(model, tower).state_dict()
    version = tuple((k, id(v), v._version) for k, v in state.items())
    memo = _HASHES.setdefault(model, {})
    if tower in memo and memo[tower][0] == version:
        return memo[tower][1]
    from ..config import to_dict

    config = getattr(getattr(model, "config", None), TOWERS[tower], None)
    digest = hashlib.sha256(json.dumps(to_dict(config) if config is not None else None, sort_keys=True,
                                       default=str).encode())
    digest.update(str(getattr(getattr(model, "config", None), "embed_dim", "")).encode())
    for key, value in sorted(state.items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    memo[tower] = (version, digest.hexdigest())
    return memo[tower][1]


def default_cache_dir() -> str:
    """``$MEDCLIP_CACHE_DIR/prompts`` or ``~/.cache/medclip/prompts``."""
    root = os.environ.get("MEDCLIP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "medclip")
    return os.path.join(root, "prompts")


def encode_texts(model, tokenizer, texts: list[str], batch_size: int = TEXT_BATCH_SIZE) -> torch.Tensor:
    """Normalised text embeddings ``(T, D)`` in input order (float32, on the model's device).

    Texts are sorted by token length and encoded in batches, so each batch is trimmed to a similar real
    length by the text tower (no work on padding); results are put back in the input order. Gradients
    flow when enabled (LoRA trains through this); wrap in ``torch.no_grad()`` otherwise.
    """
    ids = tokenizer(texts)
    order = torch.argsort((ids != 0).sum(1), stable=True)
    device = next(model.parameters()).device
    parts = [model.encode_text(ids[order[start:start + batch_size]].to(device)).float()
             for start in range(0, len(texts), batch_size)]
    return torch.cat(parts)[torch.argsort(order).to(device)]


def cached_text_embeddings(model, tokenizer, texts: list[str], cache_dir: str | None = None,
                           fingerprint: str | None = None) -> torch.Tensor:
    """:func:`encode_texts` through an on-disk cache (safetensors) keyed by weights hash + texts.

    Args:
        cache_dir: folder of the cache; None disables caching.
        fingerprint: precomputed ``tower_hash(model, "text")`` (computed when None).
    """
    if not cache_dir:
        return encode_texts(model, tokenizer, texts)
    from ..data.cachefile import load_checked, save_checked

    fingerprint = fingerprint or tower_hash(model, "text")
    key = hashlib.sha256(json.dumps([fingerprint, texts]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"{key}.safetensors")
    cached = load_checked(path, "prompt cache") if os.path.exists(path) else None
    if cached is not None and "embeddings" in cached and cached["embeddings"].shape[0] == len(texts):
        return cached["embeddings"]
    with torch.no_grad():
        emb = encode_texts(model, tokenizer, texts).cpu()
    save_checked({"embeddings": emb}, path, metadata={"texts": json.dumps(texts)[:60000]})
    return emb


def encode_prompt_sets(model, tokenizer, prompt_sets, cache_dir: str | None = None,
                       fingerprint: str | None = None) -> torch.Tensor:
    """One :func:`ensemble` embedding per prompt set ``(T, D)``; every prompt is encoded in one call.

    With ``cache_dir`` the embeddings come through the on-disk prompt cache (no gradients); without it
    gradients flow when enabled (LoRA trains through this).
    """
    flat = [p for prompts in prompt_sets for p in prompts]
    if cache_dir:
        emb = cached_text_embeddings(model, tokenizer, flat, cache_dir, fingerprint)
    else:
        emb = encode_texts(model, tokenizer, flat)
    sizes = [len(prompts) for prompts in prompt_sets]
    return torch.stack([ensemble(part) for part in torch.split(emb, sizes)])


def class_embeddings(model, cf: ClassFile, tokenizer=None, cache_dir: str | None = None,
                     fingerprint: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ensembled class embeddings: positives ``(K, D)`` and, for multi-label, negatives ``(K, D)``.

    The targets are those of :meth:`medclip.eval.task.Task.from_class_file` (where the ``no_finding``
    rule lives), encoded together in one call (one cache entry).
    """
    from .task import Task

    if tokenizer is None:
        from ..tokenizer import get_tokenizer

        tokenizer = get_tokenizer(model.config)
    task = Task.from_class_file(cf)
    with torch.no_grad():
        emb = encode_prompt_sets(model, tokenizer, task.prompts, cache_dir, fingerprint).cpu()
    k = len(task.classes)
    return emb[:k], (emb[k:] if task.n_targets > k else None)
