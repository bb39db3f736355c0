"""unirobust.attacks: attacks as functions of (model, x, y, threat, ...) -> x_adv.

Every attack runs the model in eval mode with parameter gradients off (restoring every flag it
touched), draws randomness only from the generator it is given, takes gradients with respect to the
input only, and returns detached points inside the ball and the box (checked).
"""

from unirobust.attacks.apgd import ApgdTrainResult, apgd, apgd_checkpoints, apgd_train
from unirobust.attacks.context import attack_mode, preserve_rng, resolve_generator
from unirobust.attacks.msd import msd
from unirobust.attacks.pgd import ce_loss, dlr_loss, dlr_targeted_loss, margin_loss, pgd

__all__ = [
    "ApgdTrainResult",
    "apgd",
    "apgd_checkpoints",
    "apgd_train",
    "attack_mode",
    "ce_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "margin_loss",
    "msd",
    "pgd",
    "preserve_rng",
    "resolve_generator",
]
