"""The four stages of a pass, as plain classes (no queues, no threads, no tracker):

    LoadStage (iterable of Doc) -> ChunkStage (Doc -> Doc) -> EmbedStage (add/flush) -> IndexStage (add/flush/finish)

They report through a Reporter (pipeline/stages/base.py); an executor (pipeline/executors/) runs them.
"""

from kbingest.pipeline.stages.base import Doc, PassStages, Reporter

__all__ = ["Doc", "PassStages", "Reporter"]
