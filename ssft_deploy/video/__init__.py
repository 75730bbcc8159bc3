"""From camera streams to cross-modality identities: sources, detectors, a tracker, tracklets,
association and the ``ssft-video`` CLI. Needs the ``[video]`` extra (``supervision``)."""

from __future__ import annotations

from ssft_deploy.video.detectors import Detections, MotDetections, MotionDetector, make_detector
from ssft_deploy.video.pipeline import PipelineConfig, VideoPipeline
from ssft_deploy.video.sources import Backoff, CameraReader, CameraSpec, FrameQueue
from ssft_deploy.video.stitching import StitchConfig
from ssft_deploy.video.tracklets import SamplingConfig

__all__ = ["Backoff", "CameraReader", "CameraSpec", "Detections", "FrameQueue",
           "MotDetections", "MotionDetector", "PipelineConfig", "SamplingConfig",
           "StitchConfig", "VideoPipeline", "make_detector"]
