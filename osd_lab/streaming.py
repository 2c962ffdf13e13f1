"""Speculative Streaming: one model that drafts for itself (Bhendawade et al. 2024).

The top ``num_stream_layers`` (N_s) decoder layers of a Llama carry, next to
every main-stream token, ``gamma`` extra *speculative streams*. Stream j of
the token at position t starts, at layer N - N_s, as the main stream's hidden
state there plus a learned stream-identifier embedding; it attends to the main
stream's prefix (everything token t sees) and to streams 1..j of the same
token; after the last layer the model's own norm and LM head turn it into a
guess of token t + j + 1 (the main stream at t predicts t + 1). Main tokens
never attend to streams, so the main stream is the base model, bit for bit:
we compute it by calling the base model itself.

* ``multi_stream_mask`` / ``stream_attention_mask``: the attention pattern,
  small enough to print.
* ``Streams``: the trainable part: stream embeddings, LoRA of the base's
  stream layers shared by the main stream and the streams (``base_rank``:
  the paper's joint fine-tuning, ``tune_base`` while training,
  ``merged_base`` after it), and optional stream-only adapters;
  ``StreamingModel`` puts them on a base model, ``load_streaming_model``
  the shipped ones on (a fine-tuned copy of) the zoo target.
* ``streaming_generate``: each forward pass verifies the tokens drafted in
  the previous pass (greedy or sampling); then, if the next block drafts,
  the streams run for the one token verification kept, on the same cache
  (running them at every token of the pass, before knowing which is kept,
  cost about as much again as the pass); a goodput policy
  (``measure_stream_costs``) drafts only where it pays. ``tree_nodes``
  switches to a pruned tree of top-k stream candidates (greedy).

The same loop decodes ``osd_lab.medusa.MedusaModel`` (Medusa-style heads).
Training: ``python zoo/train_streams.py``. Taught in
``notebooks/09_speculative_streaming``.
"""

import copy
import functools
import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from osd_lab.cache import cached_keys_values, forward, new_cache, rollback
from osd_lab.checks import check_choice, check_generator, check_int
from osd_lab.cost import SpeculationCosts
from osd_lab.decoding import check_prompt
from osd_lab.measure import prefilled, timed_pass
from osd_lab.models import ZOO_DIR
from osd_lab.policies import ConstantPolicy, GoodputPolicy
from osd_lab.timing import clock
from osd_lab.sampling import check_sampling_args, get_device
from osd_lab.step import MODEL_EOS, GenerationOutput, Proposal, Sampler, check_eos, decode

SUPPORTED_MODEL_TYPES = ("llama",)  # LlamaForCausalLM
ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STREAMS_DIR = ZOO_DIR / "streams"


def check_base_model(base: PreTrainedModel) -> None:
    """Refuse a base model whose architecture the streams do not support."""
    model_type = getattr(base.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"speculative streams support model_type {SUPPORTED_MODEL_TYPES} "
                         f"(LlamaForCausalLM), got {model_type!r} "
                         f"({type(base).__name__})")


# -----------------------------------------------------------------------------
# the attention pattern

def causal_mask(num_tokens: int, past_len: int = 0) -> torch.Tensor:
    """Bool ``(T, P + T)``: token t sees the P cached tokens and tokens 0..t."""
    mask = torch.ones(num_tokens, past_len + num_tokens, dtype=torch.bool)
    return mask.tril(diagonal=past_len)


def stream_attention_mask(main_mask: torch.Tensor, gamma: int) -> torch.Tensor:
    """What each stream sees, bool ``(T * gamma, S + T * gamma)``.

    main_mask: ``(T, S)`` what each of the T main tokens sees among the S main
        keys (cache and this pass): ``causal_mask`` for a chain, the ancestors
        for a tree.
    Row ``t * gamma + j - 1`` is stream j of token t: it sees what token t sees
    (the first S columns) and streams 1..j of token t (the last T * gamma).
    """
    num_tokens = main_mask.shape[0]
    sees_main = main_mask.repeat_interleave(gamma, dim=0)  # (T * gamma, S)
    earlier_streams = torch.ones(gamma, gamma, dtype=torch.bool).tril()  # (gamma, gamma)
    sees_streams = torch.block_diag(*[earlier_streams] * num_tokens)  # (T * g, T * g)
    return torch.cat([sees_main, sees_streams], dim=1)


def multi_stream_mask(num_tokens: int, gamma: int) -> torch.Tensor:
    """The whole pattern of one pass with no cache, bool ``(T (1 + gamma), T (1 + gamma))``.

    Rows and columns: the T main tokens, then the streams of token 0
    (1..gamma), of token 1, ... Main tokens see earlier main tokens only.
    """
    main = causal_mask(num_tokens)  # (T, T)
    main_rows = torch.cat([main, torch.zeros(num_tokens, num_tokens * gamma,
                                             dtype=torch.bool)], dim=1)
    return torch.cat([main_rows, stream_attention_mask(main, gamma)], dim=0)


# -----------------------------------------------------------------------------
# the trainable part

class LowRank(nn.Module):
    """A low-rank update ``x -> x A^T B^T`` that starts at zero (LoRA)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, in_features) / in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x):
        return x @ self.A.T @ self.B.T


def low_rank_adapters(layers, rank: int) -> nn.ModuleList:
    """One ``LowRank`` per linear map (``ADAPTED``) of each of ``layers``."""
    adapters = nn.ModuleList()
    for layer in layers:
        linears = {**dict(layer.self_attn.named_children()), **dict(layer.mlp.named_children())}
        adapters.append(nn.ModuleDict({
            name: LowRank(linears[name].in_features, linears[name].out_features, rank)
            for name in ADAPTED}))
    return adapters


class Streams(nn.Module):
    """Stream-identifier embeddings, plus low-rank adapters.

    base_rank: LoRA of the base model's own stream layers, shared by the main
        stream and the streams (the paper's joint fine-tuning): the main
        stream becomes the fine-tuned model (``tune_base``, ``merged_base``).
    adapter_rank: adapters used by the streams only (the base stays as it is).
    """

    def __init__(self, base: PreTrainedModel, gamma: int, num_stream_layers: int,
                 adapter_rank: int = 0, base_rank: int = 0):
        super().__init__()
        check_base_model(base)
        config = base.config
        check_int("gamma (the number of streams)", gamma, 1)
        self.gamma = int(gamma)
        check_int("num_stream_layers", num_stream_layers, 1, config.num_hidden_layers)
        self.num_stream_layers = int(num_stream_layers)
        check_int("adapter_rank", adapter_rank, 0)
        check_int("base_rank", base_rank, 0)
        self.adapter_rank, self.base_rank = int(adapter_rank), int(base_rank)
        self.stream_embeddings = nn.Parameter(0.02 * torch.randn(gamma, config.hidden_size))
        layers = base.model.layers[-num_stream_layers:]
        # one ModuleDict per stream layer (empty at rank 0)
        self.adapters = low_rank_adapters(layers, adapter_rank) if adapter_rank else nn.ModuleList()
        self.base_adapters = low_rank_adapters(layers, base_rank) if base_rank else nn.ModuleList()

    def settings(self) -> dict:
        return dict(gamma=self.gamma, num_stream_layers=self.num_stream_layers,
                    adapter_rank=self.adapter_rank, base_rank=self.base_rank)


class AddLowRank(nn.Module):
    """A weight ``W`` ``(out, in)`` seen as ``W + B A``: LoRA as a torch parametrization."""

    def __init__(self, adapter: LowRank):
        super().__init__()
        self.adapter = adapter

    def forward(self, weight):
        return weight + self.adapter.B @ self.adapter.A


def stream_linears(base: PreTrainedModel, streams: Streams):
    """``(linear, LowRank)`` for each adapted linear map of the base's stream layers."""
    layers = base.model.layers[-streams.num_stream_layers:]
    for layer, adapters in zip(layers, streams.base_adapters):
        for name, adapter in adapters.items():
            owner = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            yield getattr(owner, name), adapter


def tune_base(base: PreTrainedModel, streams: Streams) -> None:
    """For training: the base's stream layers use ``W + B A`` (differentiable,
    ``torch.nn.utils.parametrize``), in the main stream and the streams alike."""
    for module, adapter in stream_linears(base, streams):
        parametrize.register_parametrization(module, "weight", AddLowRank(adapter))


@torch.no_grad()
def merged_base(base: PreTrainedModel, streams: Streams) -> PreTrainedModel:
    """A copy of ``base`` with the streams' base adapters added into its weights:
    the fine-tuned model, whose own calls are the main stream. ``base`` itself is
    left as it is (a pair's target may be shared)."""
    tuned = copy.deepcopy(base)
    for module, adapter in stream_linears(tuned, streams):
        module.weight += (adapter.B @ adapter.A).to(module.weight.dtype)
    return tuned


def main_stream(base, input_ids, cache, main_mask=None, position_ids=None):
    """The base model's own pass over ``input_ids`` ``(1, T)``, with hidden states.

    main_mask: ``(T, S)`` bool (S = cached + T), None for causal (then this is
    exactly ``forward(base, input_ids, cache)``); position_ids ``(1, T)`` with it.
    Returns the model's output, the mask and the positions used.
    """
    extra = {}
    if main_mask is None:
        past_len = cache.get_seq_length()
        main_mask = causal_mask(input_ids.shape[1], past_len)
        position_ids = past_len + torch.arange(input_ids.shape[1], device=base.device)[None]
    else:  # the model takes an additive float mask (1, 1, T, S) as it is
        blocked = ~main_mask.to(base.device)
        extra["attention_mask"] = torch.zeros(blocked.shape, device=base.device,
                                              dtype=base.dtype).masked_fill(
            blocked, torch.finfo(base.dtype).min)[None, None]
        extra["position_ids"] = position_ids
    out = forward(base, input_ids, cache, output_hidden_states=True, **extra)
    return out, main_mask, position_ids


class StreamingModel(nn.Module):
    """A frozen base model whose top layers also run ``gamma`` speculative streams."""

    def __init__(self, base: PreTrainedModel, streams: Streams):
        super().__init__()
        check_base_model(base)
        self.base = base.requires_grad_(False)  # frozen, but for tune_base's adapters:
        self.streams = streams.to(base.device, base.dtype).requires_grad_(True)

    @property
    def gamma(self) -> int:
        return self.streams.gamma

    @property
    def device(self) -> torch.device:
        return self.base.device

    def extra_parameters(self) -> int:
        """How many parameters the streams add to the base model."""
        return sum(p.numel() for p in self.streams.parameters())

    def linear(self, layer_number: int, module: nn.Linear, name: str, x):
        """``module(x)``, plus the stream adapter of that layer if there is one."""
        out = module(x)
        if self.streams.adapters:
            out = out + self.streams.adapters[layer_number][name](x)
        return out

    def stream_layer(self, layer_number, layer, x, main_kv, mask, position_embeddings):
        """One decoder layer for the streams ``x`` ``(B, M, d)``; the base layer's weights.

        main_kv: that layer's cached main-stream keys and values ``(B, H_kv, S, D)``.
        mask: ``(M, S + M)`` bool, from ``stream_attention_mask``.
        """
        attn, mlp = layer.self_attn, layer.mlp
        batch, num_streams, _ = x.shape
        heads = (batch, num_streams, -1, attn.head_dim)

        def project(name, h):  # (B, M, d) -> (B, heads, M, D)
            out = self.linear(layer_number, getattr(attn, name), name, h)
            return out.view(heads).transpose(1, 2)

        # 1. attention: streams query the main keys (cache) and their own keys
        h = layer.input_layernorm(x)
        q, k, v = project("q_proj", h), project("k_proj", h), project("v_proj", h)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        keys = repeat_kv(torch.cat([main_kv[0], k], dim=2), attn.num_key_value_groups)
        values = repeat_kv(torch.cat([main_kv[1], v], dim=2), attn.num_key_value_groups)
        scores = q @ keys.transpose(2, 3) * attn.scaling  # (B, H, M, S + M)
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ values  # (B, H, M, D)
        out = out.transpose(1, 2).reshape(batch, num_streams, -1)  # (B, M, H * D)
        x = x + self.linear(layer_number, attn.o_proj, "o_proj", out)
        # 2. the layer's MLP
        h = layer.post_attention_layernorm(x)
        gate = mlp.act_fn(self.linear(layer_number, mlp.gate_proj, "gate_proj", h))
        up = self.linear(layer_number, mlp.up_proj, "up_proj", h)
        return x + self.linear(layer_number, mlp.down_proj, "down_proj", gate * up)

    def forward(self, input_ids, cache, main_mask=None, position_ids=None, streams_at=None):
        """One pass: main-stream logits ``(B, T, V)``, stream logits ``(B, T', gamma, V)``.

        input_ids: ``(B, T)`` tokens the cache has not read; the cache grows by T.
        main_mask: ``(T, S)`` bool, what each token sees among the S = cached + T
            main keys; None is causal (then the main stream is the base model's
            own call, unchanged). A tree passes its ancestor mask.
        position_ids: ``(B, T)`` positions (for a tree: cached + depth).
        streams_at: indices of the T' tokens whose streams to run (default all).
        Decoding runs the two halves apart (``main_pass``, then
        ``draft_logits`` for the one token verification kept).
        """
        main = self.main_pass(input_ids, cache, main_mask, position_ids)
        if streams_at is None:
            streams_at = torch.arange(input_ids.shape[1])
        return main.logits, self.draft_logits(main, streams_at, cache)

    def main_pass(self, input_ids, cache, main_mask=None, position_ids=None) -> "MainPass":
        """The main stream: the base model's own pass, kept for ``draft_logits``."""
        out, main_mask, position_ids = main_stream(self.base, input_ids, cache, main_mask,
                                                   position_ids)
        return MainPass(out.logits, out.hidden_states, main_mask, position_ids)

    def draft_logits(self, main: "MainPass", streams_at, cache) -> torch.Tensor:
        """Stream logits ``(B, T', gamma, V)`` of the tokens ``streams_at`` of
        the pass ``main``. ``cache`` must hold what those tokens saw: the whole
        pass, or, after a rollback, at least up to the last of them in a
        causal pass (a chain: its kept prefix)."""
        streams_at = torch.as_tensor(streams_at, device=self.device)
        # 1. streams start at layer N - N_s: that hidden state plus a stream embedding
        gamma, num_stream_layers = self.gamma, self.streams.num_stream_layers
        first = len(self.base.model.layers) - num_stream_layers
        start = main.hidden_states[first][:, streams_at]  # (B, T', d)
        x = (start[:, :, None] + self.streams.stream_embeddings).flatten(1, 2)  # (B, T' g, d)
        # stream j of a token at position t stands in for position t + j
        offsets = torch.arange(1, gamma + 1, device=self.device)
        stream_positions = (main.position_ids[:, streams_at, None] + offsets).flatten(1, 2)
        position_embeddings = self.base.model.rotary_emb(x, stream_positions)
        past = cache.get_seq_length()  # the keys still cached (a rollback drops the rest)
        rows = main.mask[streams_at.cpu(), :past]
        if rows.shape[1] < main.mask.shape[1] and main.mask[streams_at.cpu(), past:].any():
            raise RuntimeError("the cache no longer holds what these tokens saw")
        mask = stream_attention_mask(rows, gamma).to(self.device)
        # 2. the top layers, reusing each layer's weights and the cached main keys
        for number, layer in enumerate(self.base.model.layers[first:]):
            main_kv = cached_keys_values(cache, first + number)
            x = self.stream_layer(number, layer, x, main_kv, mask, position_embeddings)
        # 3. the model's own final norm and LM head
        stream_logits = self.base.lm_head(self.base.model.norm(x))  # (B, T' g, V)
        return stream_logits.unflatten(1, (len(streams_at), gamma))


@dataclass
class MainPass:
    """What a main-stream pass leaves for the drafts (``StreamingModel.main_pass``)."""

    logits: torch.Tensor  # (B, T, V)
    hidden_states: tuple  # each layer's input, then the final norm's output: (B, T, d) each
    mask: torch.Tensor  # (T, S) bool: which main keys each token saw
    position_ids: torch.Tensor  # (B, T)


@torch.inference_mode()
def top1_accuracy(model, documents) -> list[float]:
    """How often each guess of ``model`` (a ``StreamingModel`` or
    ``osd_lab.medusa.MedusaModel``) is right, as an argmax: the main stream's
    of token t + 1, then stream (head) j's of token t + j + 1, pooled over
    ``documents`` (1-D token-id tensors). Returns gamma + 1 fractions."""
    hits, counts = torch.zeros(model.gamma + 1), torch.zeros(model.gamma + 1)
    for ids in documents:
        ids = ids.reshape(1, -1).to(model.device)
        main_logits, draft_logits = model(ids, new_cache(model.base))
        guesses = torch.cat([main_logits[0, :, None], draft_logits[0]], 1).argmax(-1)  # (T, 1+g)
        for offset in range(model.gamma + 1):  # the guess at t of token t + offset + 1
            usable = ids.shape[1] - offset - 1
            hits[offset] += (guesses[:usable, offset] == ids[0, offset + 1:]).sum().item()
            counts[offset] += max(usable, 0)
    return (hits / counts).tolist()


# -----------------------------------------------------------------------------
# saving and loading

def fingerprint(base: PreTrainedModel) -> str:
    """A short hash of the base model's last layer and LM head: streams (heads)
    trained on one model are refused on another."""
    digest = hashlib.sha256()
    for weight in [*base.model.layers[-1].parameters(), base.lm_head.weight]:
        digest.update(weight.detach().to("cpu", torch.float16).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_weights(module: nn.Module, path: Path, base: PreTrainedModel) -> None:
    """Write ``<name>.safetensors`` (float16) and ``<name>.json`` (its settings and
    ``base``'s fingerprint) under ``path``; name is the class name in lower case
    (``streams``, ``medusaheads``)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    name = type(module).__name__.lower()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(state, path / f"{name}.safetensors")
    settings = module.settings() | dict(base_fingerprint=fingerprint(base))
    (path / f"{name}.json").write_text(json.dumps(settings, indent=1) + "\n")


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    """Load ``module``'s saved weights from ``path``; a mismatch is a clear error."""
    from safetensors.torch import load_file
    file = Path(path) / f"{type(module).__name__.lower()}.safetensors"
    state = load_file(file)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        raise ValueError(f"the weights in {file} do not match this base model: expected "
                         f"{expected}, found {found} (were they trained on another model?)")
    module.load_state_dict({k: v.float() for k, v in state.items()})
    return module


def saved_settings(path: Path, name: str, base: PreTrainedModel) -> dict:
    """The settings saved with ``name``'s weights under ``path``, after checking
    that they were trained on ``base`` (its fingerprint)."""
    file = Path(path) / f"{name}.json"
    if not file.is_file():
        raise FileNotFoundError(f"no trained weights at {file}; train them with "
                                f"`python zoo/train_streams.py` (in the repository)")
    settings = json.loads(file.read_text())
    trained_on = settings.pop("base_fingerprint", None)
    if trained_on != fingerprint(base):
        raise ValueError(f"the {name} in {path} were trained on another base model "
                         f"(fingerprint {trained_on}, this one {fingerprint(base)}): "
                         f"load them on the model they were trained on, or train new "
                         f"ones with `python zoo/train_streams.py`")
    return settings


def load_zoo_target(device=None) -> PreTrainedModel:
    device = torch.device(device) if device is not None else get_device()
    return AutoModelForCausalLM.from_pretrained(ZOO_DIR / "target", dtype=torch.float32) \
        .to(device).eval()


def load_streaming_model(name="zoo", *, base: PreTrainedModel | None = None,
                         device=None) -> StreamingModel:
    """The zoo target with its trained streams (``osd_lab/zoo/models/streams``).

    name: ``"zoo"`` or a folder written by ``save_weights``.
    base: the model the streams were trained on (default: load the zoo
        target). Streams trained jointly with the model (``base_rank`` > 0)
        run on a fine-tuned copy of it (``merged_base``): ``model.base``, whose
        own autoregressive decoding the streams' output equals; ``base`` is
        not changed.
    """
    path = STREAMS_DIR if name == "zoo" else Path(name)
    base = base if base is not None else load_zoo_target(device)
    streams = load_weights(Streams(base, **saved_settings(path, "streams", base)), path)
    if streams.base_rank:
        base = merged_base(base, streams)
    return StreamingModel(base, streams).eval()


# -----------------------------------------------------------------------------
# trees of stream candidates

def ancestor_mask(parents: list[int], past_len: int = 0) -> torch.Tensor:
    """Bool ``(T, P + T)``: token i sees the P cached tokens, its ancestors and itself.

    parents: for each of the T tokens of a pass, the index of its parent in the
        pass, -1 for none (a chain is ``[-1, 0, 1, ...]``: the causal mask).
    """
    mask = torch.zeros(len(parents), past_len + len(parents), dtype=torch.bool)
    mask[:, :past_len] = True
    for i, parent in enumerate(parents):
        if parent >= 0:
            mask[i] = mask[parent]
        mask[i, past_len + i] = True
    return mask


def draft_tree(stream_logits: torch.Tensor, tree_width: int, tree_nodes: int):
    """A pruned tree of stream candidates: ``(tokens (N,), parents (N,), depths (N,))``.

    stream_logits: ``(gamma, V)``, the streams of one token. Stream j offers its
    ``tree_width`` most likely tokens at depth j; a path's score is the product
    of its tokens' stream probabilities. We keep the ``tree_nodes`` best-scored
    paths (prefixes included: a child never outscores its parent) and drop the
    unlikely branches before the next pass. Node i (1-based) has parent
    ``parents[i - 1]``, 0 being the root (the token the streams belong to).
    """
    top = torch.softmax(stream_logits.float(), dim=-1).topk(tree_width, dim=-1)
    nodes = [(1.0, 0, [])]  # (score, depth, path of candidate ranks)
    frontier = nodes
    for depth in range(stream_logits.shape[0]):
        frontier = [(score * top.values[depth, rank].item(), depth + 1, path + [rank])
                    for score, _, path in frontier for rank in range(tree_width)]
        nodes = nodes + frontier
    kept = sorted(nodes[1:], key=lambda node: (-node[0], node[1]))[:tree_nodes]
    kept.sort(key=lambda node: node[1])  # parents before children
    index = {tuple(path): i + 1 for i, (_, _, path) in enumerate(kept)}
    tokens = [top.indices[len(path) - 1, path[-1]].item() for _, _, path in kept]
    parents = [index.get(tuple(path[:-1]), 0) for _, _, path in kept]
    depths = [depth for _, depth, _ in kept]
    return torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths)


# -----------------------------------------------------------------------------
# the decoding loop

class StreamingTarget:
    """A model that drafts for itself, as the target of the step: one pass
    scores the block (its main stream) and drafts the next one (its streams
    or heads, at the pending token and at each node)."""

    def __init__(self, model, input_ids: torch.Tensor):
        self.model, self.device, self.cache = model, model.device, new_cache(model.base)
        # Invariant: the cache holds every token but `unread` (accepted tree
        # nodes, read again) and `pending`: the whole prompt at the start, read
        # in the first pass (no prefill of its own), then the newest token
        self.unread, self.pending = input_ids[:, :0], input_ids  # (1, u), (1, P)

    def score(self, proposal):
        """Main logits ``(1, 1 + g, V)`` after the newest token and each node,
        and ``draft_logits(node)``: the streams (heads) of node ``node`` (0:
        the newest token), ``(gamma, V)``, run only when asked, for the one
        node verification kept, before ``commit`` rolls the cache back."""
        before = self.unread.shape[1] + self.pending.shape[1] - 1  # tokens before the newest
        pass_input = torch.cat([self.unread, self.pending, proposal.tokens[None]], dim=1)
        if proposal.parents is None:  # a chain: the base model's own causal pass
            main = self.model.main_pass(pass_input, self.cache)
        else:  # a tree: each node sees the cache, unread, pending and its ancestors
            pass_parents = list(range(-1, before)) + (proposal.parents + before).tolist()
            mask = ancestor_mask(pass_parents, self.cache.get_seq_length())
            positions = (mask.sum(1) - 1).to(self.device)[None]  # (1, T): past + depth
            main = self.model.main_pass(pass_input, self.cache, mask, positions)

        def draft_logits(node: int) -> torch.Tensor:
            return self.model.draft_logits(main, [before + node], self.cache)[0, 0]

        return main.logits[:, before:], draft_logits

    def commit(self, proposal, path, num_accepted, next_token) -> None:
        """A chain keeps its accepted drafts in the cache; a tree drops all its
        nodes (the accepted ones sit among others) and reads the accepted again."""
        if proposal.parents is None:
            rollback(self.cache, len(proposal.tokens) - num_accepted)
            self.unread = self.pending[:, :0]
        else:
            rollback(self.cache, len(proposal.tokens))
            self.unread = proposal.tokens[path[:num_accepted] - 1][None]
        self.pending = next_token[:, None]


class StreamDrafter:
    """The drafts of a model's own streams (or Medusa heads) at the last kept
    token: a chain (stream j's token at depth j), whose streams run only when
    the next block drafts, or a pruned tree of their top tokens (``draft_tree``)."""

    can_stop_early = False  # the streams draft a fixed number of tokens

    def __init__(self, sampler, draft_len: int, device: torch.device,
                 tree_nodes: int | None = None, tree_width: int = 2):
        self.sampler, self.draft_len, self.device = sampler, draft_len, device
        self.tree_nodes, self.tree_width = tree_nodes, tree_width
        # what the next block drafts from, None before the first pass: a chain's
        # () -> (draft_len, V), the kept token's streams, run on demand; a tree's
        # (tokens, parents, depths), drafted at commit
        self.kept_streams = self.tree = None

    def propose(self, block, room: int):
        depth = min(room, block.most)  # cut to leave room for one more token
        drafts_from = self.kept_streams if self.tree_nodes is None else self.tree
        if drafts_from is None or depth == 0:  # before the first pass, or not drafting
            return Proposal(torch.zeros(0, dtype=torch.long, device=self.device))
        if self.tree_nodes is None:  # a chain: run the streams now, for this block only
            tokens, q, top = self.sampler.draw(self.kept_streams()[:depth])  # (depth,)
            return Proposal(tokens, q, [] if top is None else [top])
        tokens, parents, depths = self.tree
        keep = depths <= depth  # a prefix-closed part of the tree
        return Proposal(tokens[keep], parents=parents[keep])

    def commit(self, proposal, path, num_accepted, next_token, draft_logits) -> None:
        last_kept = int(path[num_accepted - 1]) if num_accepted else 0  # 0: pending
        if self.tree_nodes is None:  # on demand: the target's cache then ends at last_kept
            self.kept_streams = lambda: draft_logits(last_kept)[:self.draft_len]
            return
        stream_logits = draft_logits(last_kept)[:self.draft_len]  # before the rollback
        self.tree = tuple(t.to(stream_logits.device) for t in draft_tree(
            stream_logits, self.tree_width, self.tree_nodes))


_COSTS = weakref.WeakKeyDictionary()  # model -> its SpeculationCosts


@torch.inference_mode()
def measure_stream_costs(model, prompt_len: int = 32, repeats: int = 5,
                         cached: bool = True) -> SpeculationCosts:
    """What a step costs a model that drafts for itself, for ``GoodputPolicy``.

    A step that drafts g tokens is one pass over g + 1 tokens plus the streams
    (heads) of the one token verification kept; a step that drafts none is a
    plain one-token pass, the unit. So ``draft_step`` is 0 and ``verify[n - 1]``
    (n >= 2) is (pass over n tokens + the streams) / plain pass. Timed in
    ``repeats`` interleaved rounds after a cached prompt, fastest kept, each
    pass rolled back; ``cached`` keeps the answer per model for the session.
    """
    check_int("prompt_len", prompt_len, low=1)
    check_int("repeats", repeats, low=1)
    if cached and model in _COSTS:
        return _COSTS[model]
    now = functools.partial(clock, model.device)
    cache, ids = prefilled(model.base, 1, prompt_len, model.gamma + 1)
    sizes = range(1, model.gamma + 2)
    rounds = []  # per round: seconds of each pass size, then of the streams
    for _ in range(repeats + 1):
        passes = [timed_pass(model.base, cache, ids[:, :n], now) for n in sizes]
        main = model.main_pass(ids[:, :1], cache)
        start = now()
        model.draft_logits(main, [0], cache)
        rounds.append(passes + [now() - start])
        rollback(cache, 1)
    fastest = [min(column) for column in zip(*rounds[1:])]  # the first round warms up
    *times, streams = fastest
    verify = [1.0] + [(times[n - 1] + streams) / times[0] for n in sizes[1:]]
    costs = SpeculationCosts(0.0, tuple(verify))
    _COSTS[model] = costs
    return costs


STREAM_POLICIES = ("auto", "constant", "goodput")


@torch.inference_mode()
def streaming_generate(model, input_ids, max_new_tokens: int, *, temperature: float = 0.0,
                       top_k: int = 0, top_p: float = 1.0,
                       eos_token_id: int | list | str | None = MODEL_EOS,
                       generator: torch.Generator | None = None, draft_len: int | None = None,
                       draft_len_policy: str = "auto", costs: SpeculationCosts | None = None,
                       tree_nodes: int | None = None, tree_width: int = 2) -> GenerationOutput:
    """Decode with a model that drafts for itself; lossless as ``speculative_generate``.

    model: a ``StreamingModel`` or an ``osd_lab.medusa.MedusaModel``: its call
        returns main logits ``(1, T, V)`` and draft logits ``(1, T', gamma, V)``.
    draft_len: use the first ``draft_len`` streams (heads), default all gamma.
    draft_len_policy: "goodput" drafts the chain length with the most
        expected tokens per second (``GoodputPolicy`` on
        ``measure_stream_costs``), none where the streams do not pay, and then
        runs no streams; "constant" always ``draft_len``; "auto" (the
        default): goodput for a chain, constant for a tree.
    costs: for "goodput" (default: ``measure_stream_costs``, once per model).
    tree_nodes: None drafts a chain (stream j's sample at depth j). An integer
        drafts a tree of that many nodes from the top ``tree_width`` tokens of
        each stream (``draft_tree``); greedy only (temperature 0).
    The loop is ``osd_lab.step.decode``, as for a draft model: a
    ``StreamingTarget`` scores the block with its main stream, verification
    keeps a prefix along the chain or the tree's branch that follows the
    target, and a ``StreamDrafter`` runs the streams of the kept token alone
    for the next block.

    Returns ``GenerationOutput(tokens (N,), stats)``, ``stats`` an
    ``osd_lab.step.DecodingStats``: ``target_calls`` counts the passes (the
    first reads the prompt), ``draft_lens`` the drafted tokens or tree nodes,
    ``tau`` the tokens per pass.
    """
    input_ids = check_prompt(model.base, input_ids, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    check_generator(generator, model.base.device)
    eos_ids = check_eos(eos_token_id, model.base.config.vocab_size, model.base.device,
                        model.base)
    if draft_len is None:
        draft_len = model.gamma
    check_int("draft_len", draft_len, 1, model.gamma)
    check_choice("draft_len_policy", draft_len_policy, STREAM_POLICIES)
    if tree_nodes is not None:
        check_int("tree_nodes", tree_nodes, 1)
        check_int("tree_width", tree_width, 1, model.base.config.vocab_size)
        if temperature != 0:
            raise ValueError(f"tree_nodes needs temperature=0 (greedy verification of a "
                             f"tree), got temperature={temperature}; use tree_nodes=None "
                             f"(a chain) to sample")
        if draft_len_policy == "goodput":
            raise ValueError("draft_len_policy='goodput' chooses a chain's length; a tree "
                             "(tree_nodes) drafts its nodes every pass: use 'constant' or 'auto'")
    goodput = draft_len_policy == "goodput" or (draft_len_policy == "auto" and tree_nodes is None)
    if costs is not None and not goodput:
        raise ValueError("costs are read by the goodput policy only (a chain with "
                         "draft_len_policy 'goodput' or 'auto')")
    if goodput:
        policy = GoodputPolicy(costs if costs is not None else measure_stream_costs(model),
                               max_draft_len=draft_len)
    else:
        policy = ConstantPolicy(draft_len)
    sampler = Sampler(temperature, top_k, top_p, generator)
    return decode(StreamingTarget(model, input_ids),
                  StreamDrafter(sampler, draft_len, model.device, tree_nodes, tree_width),
                  policy, sampler, max_new_tokens, eos_ids)
