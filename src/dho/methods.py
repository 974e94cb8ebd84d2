"""The training methods, each named once: what it consumes, how its student predicts, how it is shown.

:data:`METHOD_SPECS` is the registry every other module reads: the config's choices
(``loss.method``), the sweep's method list, the training loop's streams and heads, the mixing
search (``predict``), the report's labels and row order. Its loss is :func:`dho.losses.method_loss`.
Adding a method: a spec here, its branch in ``method_loss``, a test in tests/test_losses.py.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METHODS", "METHOD_SPECS", "MethodSpec"]


@dataclass(frozen=True)
class MethodSpec:
    """What a training method consumes and how its student predicts."""

    labeled: bool  # draws labeled batches
    unlabeled: bool  # draws unlabeled batches
    teacher: bool  # needs teacher outputs
    dual_head: bool  # the student has a second head (h_KD, or SSKD/DHKD's auxiliary head)
    label: str  # its name in tables and plots
    summary: str
    predict: str = "ce_head"  # "mix": the tuned alpha/beta mix of both heads; "ce_head": h_CE alone
    projector: bool = False  # a linear projector to the teacher's feature space (feature KD)
    pcgrad: bool = False  # project conflicting CE/KD gradients (Yu et al. 2020) instead of summing


# In the order of the paper's tables: baselines first, DHO last.
METHOD_SPECS: dict[str, MethodSpec] = {
    "ce": MethodSpec(True, False, False, False, "CE", "cross-entropy on the labeled images only"),
    "kd_logit": MethodSpec(False, True, True, False, "KD (logit)",
                           "logit distillation (KL to the teacher) on the unlabeled images only"),
    "kd_feature": MethodSpec(
        False, True, True, False, "KD (feature)", "feature distillation (MSE to the teacher's image feature through a "
        "linear projector) on the unlabeled images; predicts by cosine with the teacher's class embeddings", projector=True),
    "ce_kd_logit": MethodSpec(True, True, True, False, "CE+KD (logit)",
                              "one head trained with lambda*CE + (1-lambda)*KD(logit)"),
    "ce_kd_feature": MethodSpec(True, True, True, False, "CE+KD (feature)",
                                "one head trained with CE, plus feature KD through a projector", projector=True),
    "sskd": MethodSpec(True, True, True, True, "SSKD",
                       "SSKD: CE head on labeled, KD head on unlabeled images; predicts with h_CE"),
    "dhkd": MethodSpec(True, True, True, True, "DHKD",
                       "DHKD: CE on h_CE, BinaryKL-Norm KD on an auxiliary head; predicts with h_CE"),
    "pcgrad": MethodSpec(True, True, True, False, "PCGrad",
                         "one head, CE+KD(logit) with PCGrad on the conflicting gradients", pcgrad=True),
    "dho": MethodSpec(True, True, True, True, "DHO",
                      "CE head on labeled, KD head on all images; predict with the tuned mix", predict="mix"),
}
METHODS: tuple[str, ...] = tuple(METHOD_SPECS)
