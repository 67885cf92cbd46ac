"""Telephone-events (RFC 4733), tones, WAV files and the recorder."""

from __future__ import annotations

import wave
from array import array
from pathlib import Path

import pytest

from icerelay.endpoint.audio import (
    Recorder,
    Silence,
    ToneSource,
    WavSource,
    dominant_frequency,
    read_wav,
    resample,
    rms,
    write_wav,
)
from icerelay.endpoint.dtmf import DtmfReceiver, DtmfSender, TelephoneEvent, event_for
from icerelay.endpoint.errors import RtpError


def test_event_payload_bits() -> None:
    event = TelephoneEvent(event_for("#"), end=True, volume=10, duration=800)
    assert event.encode() == bytes([11, 0x80 | 10, 0x03, 0x20])
    assert TelephoneEvent.decode(event.encode()) == event
    assert event.digit == "#"
    assert event_for("a") == 12 and event_for("!") == 16
    with pytest.raises(RtpError):
        event_for("x")
    with pytest.raises(RtpError):
        TelephoneEvent.decode(b"\x01")


def test_sender_sequence() -> None:
    sender = DtmfSender("5", duration=0.1)  # 800 samples: 5 updates, the 5th is the end
    payloads = []
    markers = []
    while (payload := sender.next_packet()) is not None:
        payloads.append(TelephoneEvent.decode(payload))
        markers.append(sender.first())
    assert [p.duration for p in payloads] == [160, 320, 480, 640, 800, 800, 800]
    assert [p.end for p in payloads] == [False] * 4 + [True] * 3
    assert markers == [True] + [False] * 6


def test_receiver_reports_once_and_recovers_lost_ends() -> None:
    receiver = DtmfReceiver()
    start = TelephoneEvent(1, duration=160).encode()
    end = TelephoneEvent(1, end=True, duration=800).encode()
    assert receiver.receive(1000, start) is None
    assert receiver.receive(1000, end) == "1"
    assert receiver.receive(1000, end) is None  # the repeats
    # "2" loses all its end packets; "3" starting reports it.
    assert receiver.receive(5000, TelephoneEvent(2, duration=160).encode()) is None
    assert receiver.receive(9000, TelephoneEvent(3, duration=160).encode()) == "2"
    assert receiver.receive(9000, TelephoneEvent(3, end=True, duration=320).encode()) == "3"
    assert receiver.digits == ["1", "2", "3"]


def test_tone_frequency_level_and_continuity() -> None:
    tone = ToneSource(1000, amplitude=0.5)
    samples = array("h")
    for _ in range(10):
        samples.extend(tone.read(160))
    assert dominant_frequency(samples[:800], low=500, high=1500) == pytest.approx(1000, abs=10)
    assert rms(samples) == pytest.approx(0.5 * 32767 / 2**0.5, rel=0.01)
    # Phase continuity: no jump at packet boundaries bigger than one sample step allows.
    steps = [abs(samples[i + 1] - samples[i]) for i in range(len(samples) - 1)]
    assert max(steps) < 0.5 * 32767 * 2 * 3.1416 * 1000 / 8000 + 2


def test_tone_duration_and_silence() -> None:
    tone = ToneSource(440, duration=0.03)
    assert len(tone.read(160)) == 160 and len(tone.read(160)) == 80 and len(tone.read(160)) == 0
    assert Silence().read(4) == array("h", [0, 0, 0, 0])
    silence = Silence(duration=0.001)
    assert len(silence.read(160)) == 8


def test_wav_round_trip_resample_and_mono(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, array("h", [0, 100, -100, 32767]))
    assert read_wav(path) == array("h", [0, 100, -100, 32767])
    stereo = tmp_path / "s.wav"
    with wave.open(str(stereo), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(array("h", [100, 300] * 1600).tobytes())
    mono = read_wav(stereo)
    assert len(mono) == 800 and set(mono) == {200}
    assert resample(array("h", [0, 10, 20, 30]), 8000, 16000)[:4] == array("h", [0, 5, 10, 15])
    source = WavSource(path, loop=True)
    assert list(source.read(6)) == [0, 100, -100, 32767, 0, 100]
    (tmp_path / "bad.wav").write_bytes(b"RIFFnope")
    with pytest.raises(RtpError):
        read_wav(tmp_path / "bad.wav")


def test_recorder_places_by_timestamp() -> None:
    recorder = Recorder()
    one = array("h", [1] * 160)
    three = array("h", [3] * 160)
    recorder.write(1000, one)
    recorder.write(1320, three)  # 1160 lost
    recorder.write(1160, array("h", [2] * 160))  # ... or just late
    assert recorder.samples[:160] == one and recorder.samples[160:320] == array("h", [2] * 160)
    assert recorder.samples[320:] == three
    recorder.write(500, one)  # before the start: dropped
    assert len(recorder.samples) == 480
    recorder.write(1000 + 8000 * 60, one)  # a jump of a minute is a new talk spurt
    assert len(recorder.samples) == 640
    recorder.restart()
    recorder.write(77, three)
    assert len(recorder.samples) == 800 and recorder.samples[-1] == 3
