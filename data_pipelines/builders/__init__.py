"""TFDS builders writing array_record datasets that read back without TensorFlow."""

from data_pipelines.builders.labeled_audio import (
    LabeledAudioBuilder,
    LabeledAudioConfig,
    build_labeled_audio,
    load_build_report,
    plan_labeled_audio,
    stratified_group_holdout,
)

__all__ = [
    "LabeledAudioBuilder",
    "LabeledAudioConfig",
    "build_labeled_audio",
    "load_build_report",
    "plan_labeled_audio",
    "stratified_group_holdout",
]
