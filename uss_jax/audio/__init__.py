"""Signal front ends inside the jitted graph.

Submodules: ``stft`` (STFT / iSTFT, magnitude and phase), ``mel`` (mel filterbanks, log-mel, Kaldi fbank),
``bandsplit`` (CaRE-SEP mel band-split and its inverse), ``frontends`` (the named front end of each seed system,
``get_frontend``, and ``spec_augment``). Waveforms are ``(..., samples)`` float32; time-frequency arrays are
``(..., frames, bins)`` (time before frequency).

The package re-exports the front-end registry only; import the signal functions from their submodule
(``from uss_jax.audio.stft import stft, istft``), since ``uss_jax.audio.stft`` names the module.
"""

from uss_jax.audio import bandsplit, frontends, mel, stft
from uss_jax.audio.frontends import (
    AUDIOMAE_NORM_STATS,
    FRONTENDS,
    AudioMAEFbank,
    CareBandSplit,
    M2DLogMel,
    PannsLogMel,
    UssMagnitude,
    VGGishLogMel,
    get_frontend,
    spec_augment,
)

__all__ = [
    "AUDIOMAE_NORM_STATS", "FRONTENDS", "AudioMAEFbank", "CareBandSplit", "M2DLogMel", "PannsLogMel", "UssMagnitude",
    "VGGishLogMel", "bandsplit", "frontends", "get_frontend", "mel", "spec_augment", "stft",
]
