"""The merge-rule seam (DESIGN.md, issue 7 point 4): how a set of experts becomes the model that is
evaluated, and when.

A rule declares its cadence with two class flags: ``every_step`` (the Trainer calls
:meth:`MergeRule.after_step` after every expert stepped on a batch: Generalist's EMA-mix) and
``every_epoch`` (:meth:`MergeRule.after_epoch` once the epoch's last step is done: RAMP's gradient
projection). :meth:`MergeRule.before_epoch` is always called and is where a rule snapshots the
weights an epoch starts from. A rule's knobs live in its own spec (registered in
:data:`MERGE_RULES`), not on :class:`~unirobust.experts.expert.Expert`. Its state is a flat dict of
tensors and plain values, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from unirobust.errors import CheckpointError, ConfigError
from unirobust.experts.expert import Expert
from unirobust.registry import Registry
from unirobust.schema import Spec


@dataclass(frozen=True)
class MergeContext:
    """What a merge builder gets besides its spec.

    ``expert_names`` are all experts of the stage in order (the first is the anchor);
    ``local_experts`` the indices this process holds (all of them unless experts are spread over
    ranks), and ``all_reduce`` sums a flat tensor over the ranks that hold the other experts.
    """

    epochs: int
    expert_names: tuple[str, ...]
    local_experts: tuple[int, ...]
    all_reduce: Callable[[Tensor], None] | None = None


class MergeRule:
    """Base of every merge rule: hooks are no-ops, the global model is the first expert's."""

    every_step: ClassVar[bool] = False
    every_epoch: ClassVar[bool] = False
    n_experts: ClassVar[tuple[int, int | None]] = (1, None)  # (minimum, maximum or None)

    def setup(self, experts: list[Expert]) -> None:
        """Create shadow state from the (initial) experts; called once before training."""
        self._model = experts[0].model

    def before_epoch(self, experts: list[Expert], epoch: int) -> None:
        """Called before the first batch of ``epoch``."""

    def after_step(self, experts: list[Expert], epoch: int, iteration: int, n_iters: int) -> None:
        """Called after every expert stepped on batch ``iteration`` (0-based) of ``epoch``."""

    def after_epoch(self, experts: list[Expert], epoch: int) -> None:
        """Called once the epoch's last step (and its ``after_step``) is done."""

    def global_model(self) -> nn.Module:
        """The model that is evaluated, selected, saved and exported."""
        return self._model

    def member_models(self, experts: list[Expert]) -> dict[str, nn.Module]:
        """The models behind the global one, by label, for per-member validation
        (``validation.members``): each expert's own model; rules with shadows add theirs."""
        return {e.name: e.model for e in experts}

    def log(self, epoch: int, n_iters: int) -> dict[str, Any]:
        """Values to put in the epoch's metrics record (e.g. the mix weights)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise CheckpointError(
                f"merge rule keeps no state, but the checkpoint has {sorted(state)}"
            )


MERGE_RULES: Registry[MergeRule] = Registry(
    "merge rule",
    modules=(
        "unirobust.experts.merge",
        "unirobust.experts.ema_mix",
        "unirobust.experts.projection",
    ),
)
"""Every merge rule by name; a builder is ``(spec, MergeContext) -> MergeRule``."""


def check_expert_count(name: str, rule: type[MergeRule], count: int) -> None:
    """A one-line error when a rule is given a number of experts it cannot merge."""
    low, high = rule.n_experts
    if count < low or (high is not None and count > high):
        allowed = (
            f"exactly {low}"
            if low == high
            else f"{low} or more"
            if high is None
            else (f"{low} to {high}")
        )
        raise ConfigError(
            f"merge rule '{name}' takes {allowed} expert(s), got {count}; "
            f"registered rules: {', '.join(MERGE_RULES.names())}"
        )


class NoMergeSpec(Spec):
    """Single-expert training: the global model is the expert itself."""

    name: Literal["none"] = "none"


class NoMerge(MergeRule):
    """Single-expert training: the global model is the expert's own model (no EMA)."""

    n_experts = (1, 1)


@MERGE_RULES.register("none", NoMergeSpec)
def build_no_merge(spec: NoMergeSpec, ctx: MergeContext) -> NoMerge:
    """One expert, no merge: plain (adversarial) training."""
    return NoMerge()
