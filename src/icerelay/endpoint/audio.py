"""Audio sources and sinks for the endpoint: tones, WAV files, silence, and a recorder.

Everything is 16-bit signed mono PCM at the codec clock (8000 Hz for G.711), in ``array('h')``.
A *source* is read one packet time at a time (``read(count)``); it returns fewer samples (or
none) when it has ended. :func:`dominant_frequency` and :func:`rms` let tests and the phone
check what was received without an FFT library (Goertzel's algorithm).
"""

from __future__ import annotations

import math
import wave
from array import array
from pathlib import Path
from typing import Protocol

from icerelay.endpoint.errors import RtpError

SAMPLE_RATE = 8000


class AudioSource(Protocol):
    """Anything the RTP session can pull audio from."""

    def read(self, count: int) -> array[int]:
        """Up to ``count`` samples; fewer at the end, then empty arrays."""
        ...


class Silence:
    """Endless (or ``duration``-long) silence."""

    def __init__(self, duration: float | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        self._left = None if duration is None else int(duration * sample_rate)

    def read(self, count: int) -> array[int]:
        if self._left is not None:
            count = min(count, self._left)
            self._left -= count
        return array("h", bytes(2 * count))


class ToneSource:
    """A sine tone (or a sum of tones, e.g. DTMF-like dual tones), phase-continuous across reads."""

    def __init__(self, frequencies: float | tuple[float, ...] = 440.0, *,
                 amplitude: float = 0.5, duration: float | None = None,
                 sample_rate: int = SAMPLE_RATE) -> None:
        self.frequencies = (frequencies,) if isinstance(frequencies, int | float) else frequencies
        if not self.frequencies or any(not 0 < f < sample_rate / 2 for f in self.frequencies):
            raise ValueError("tone frequencies must be between 0 and half the sample rate")
        if not 0 <= amplitude <= 1:
            raise ValueError("amplitude is a fraction of full scale, 0-1")
        self._scale = amplitude * 32767 / len(self.frequencies)
        self._steps = [2 * math.pi * f / sample_rate for f in self.frequencies]
        self._position = 0
        self._end = None if duration is None else int(duration * sample_rate)

    def read(self, count: int) -> array[int]:
        if self._end is not None:
            count = max(0, min(count, self._end - self._position))
        start = self._position
        self._position += count
        scale, steps = self._scale, self._steps
        return array("h", [
            round(scale * sum(math.sin(step * n) for step in steps))
            for n in range(start, start + count)
        ])


class WavSource:
    """Samples of a WAV file, mixed to mono and resampled (linearly) to the codec rate.

    The whole file is read at once: call audio files are small, and this keeps the send path
    free of disk reads. ``loop`` starts again at the end.
    """

    def __init__(self, path: str | Path, *, loop: bool = False,
                 sample_rate: int = SAMPLE_RATE) -> None:
        self.samples = read_wav(path, sample_rate)
        self.loop = loop
        self._position = 0

    def read(self, count: int) -> array[int]:
        out = array("h")
        while len(out) < count:
            chunk = self.samples[self._position:self._position + count - len(out)]
            self._position += len(chunk)
            out.extend(chunk)
            if self._position >= len(self.samples):
                if not self.loop or not self.samples:
                    break
                self._position = 0
        return out


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> array[int]:
    """A WAV file (PCM 8/16-bit, any channels and rate) as mono 16-bit samples at ``sample_rate``.

    :class:`RtpError` if the file is not a PCM WAV file.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise RtpError(f"{path}: not a PCM WAV file ({exc})") from exc
    if width == 2:
        samples = array("h", frames[: len(frames) // 2 * 2])
        if _big_endian():
            samples.byteswap()
    elif width == 1:  # unsigned 8-bit
        samples = array("h", [(b - 128) << 8 for b in frames])
    else:
        raise RtpError(f"{path}: {8 * width}-bit samples are not supported (use 8 or 16)")
    if channels > 1:
        samples = array("h", [
            sum(samples[i:i + channels]) // channels
            for i in range(0, len(samples) - channels + 1, channels)
        ])
    if rate != sample_rate:
        samples = resample(samples, rate, sample_rate)
    return samples


def write_wav(path: str | Path, samples: array[int], sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM."""
    data = array("h", samples)
    if _big_endian():
        data.byteswap()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(data.tobytes())


def resample(samples: array[int], from_rate: int, to_rate: int) -> array[int]:
    """Linear-interpolation resampling: enough for speech prompts and tones at telephone rate."""
    if from_rate <= 0 or to_rate <= 0:
        raise RtpError("sample rates must be positive")
    if from_rate == to_rate or not samples:
        return array("h", samples)
    count = len(samples) * to_rate // from_rate
    ratio = from_rate / to_rate
    last = len(samples) - 1
    out = array("h")
    for n in range(count):
        position = n * ratio
        index = int(position)
        fraction = position - index
        a = samples[min(index, last)]
        b = samples[min(index + 1, last)]
        out.append(round(a + (b - a) * fraction))
    return out


def _big_endian() -> bool:
    import sys

    return sys.byteorder == "big"


class Recorder:
    """Received audio placed by RTP timestamp, so loss and reordering keep the timeline.

    The first packet sets time zero; a packet is written at ``timestamp - first`` samples (gaps
    stay silent, late packets fill their place). A timestamp jump of more than ``max_gap``
    seconds is treated as a new talk spurt appended at the end rather than a huge silence.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, *, max_gap: float = 5.0,
                 max_duration: float = 3600.0) -> None:
        self.sample_rate = sample_rate
        self.samples = array("h")
        self._origin: int | None = None
        self._base = 0
        self._max_gap = int(max_gap * sample_rate)
        self._max_samples = int(max_duration * sample_rate)

    def write(self, timestamp: int, samples: array[int]) -> None:
        if self._origin is None:
            self._origin = (timestamp - self._base) & 0xFFFFFFFF
        offset = (timestamp - self._origin) & 0xFFFFFFFF
        if offset >= 0x80000000:  # before the first packet (reordered start): drop
            return
        if offset > len(self.samples) + self._max_gap:
            self._origin = (timestamp - len(self.samples)) & 0xFFFFFFFF
            offset = len(self.samples)
        end = offset + len(samples)
        if end > self._max_samples:
            return
        if end > len(self.samples):
            self.samples.extend(array("h", bytes(2 * (end - len(self.samples)))))
        self.samples[offset:end] = samples

    def restart(self) -> None:
        """The next packet starts a new timeline appended after what was recorded."""
        self._origin = None
        self._base = len(self.samples)

    def save(self, path: str | Path) -> None:
        write_wav(path, self.samples, self.sample_rate)


def rms(samples: array[int] | list[int]) -> float:
    """Root mean square level of ``samples`` (0 for none)."""
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def goertzel_power(samples: array[int] | list[int], frequency: float,
                   sample_rate: int = SAMPLE_RATE) -> float:
    """Power of one frequency in ``samples`` (Goertzel), normalised by the length."""
    if not samples:
        return 0.0
    coefficient = 2 * math.cos(2 * math.pi * frequency / sample_rate)
    s1 = s2 = 0.0
    for sample in samples:
        s1, s2 = sample + coefficient * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coefficient * s1 * s2) / (len(samples) ** 2)


def dominant_frequency(samples: array[int] | list[int], *, low: float = 100.0,
                       high: float = 3500.0, step: float = 10.0,
                       sample_rate: int = SAMPLE_RATE) -> float:
    """The strongest frequency between ``low`` and ``high`` at ``step`` resolution."""
    best, best_power = low, -1.0
    frequency = low
    while frequency <= high:
        power = goertzel_power(samples, frequency, sample_rate)
        if power > best_power:
            best, best_power = frequency, power
        frequency += step
    return best
