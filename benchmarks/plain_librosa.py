"""The plain librosa script of ``ser bench process``: what a user would write without the store.

``python plain_librosa.py LIST OUT``: every audio file named in the text file LIST (one path per
line) -> ``librosa.load(sr=16000)``, 64-band log-Mel (25 ms Hamming window, 10 ms hop, 512-point
FFT, 20-8000 Hz), delta and delta-delta -> ``OUT/<index>.npy`` in float16. Imports only numpy and
librosa, as such a script would; the same computation as the naive loop of ``ser bench featurize``.
"""

import sys
from pathlib import Path

import librosa
import numpy as np


def main(listing: str, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(Path(listing).read_text().splitlines()):
        y, sr = librosa.load(path, sr=16000)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, win_length=400, hop_length=160, window="hamming",
                                             n_mels=64, fmin=20.0, fmax=8000.0, center=False)
        logmel = np.log(np.maximum(mel, 1e-10))
        feats = np.stack([logmel, librosa.feature.delta(logmel, width=5), librosa.feature.delta(logmel, width=5, order=2)])
        np.save(folder / f"{i:06d}.npy", feats.astype(np.float16))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
