"""Retrieval metrics of the field's protocols: CMC, mAP, mINP for SYSU-MM01 and RegDB."""

from ssft_deploy.metrics.ranking import eval_regdb, eval_sysu

__all__ = ["eval_regdb", "eval_sysu"]
