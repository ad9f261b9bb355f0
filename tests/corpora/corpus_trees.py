"""Fixture corpora (helpers for tests/corpora): one tiny tree per adapter, in the corpus's real naming scheme, with edge cases.

Each builder writes good files (mono 16 kHz WAV, stereo, 48 kHz FLAC), a corrupt file, a silent
file, a file with an unknown emotion code and one with an unparseable name, and returns a
:class:`Tree` saying what the adapter must produce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNREADABLE = "unreadable audio"
SILENT = "all-silent audio"
UNKNOWN = "unknown emotion code"
UNPARSEABLE = "unparseable name"


@dataclass
class Tree:
    """A generated corpus: where it is, the rows expected (id -> fields) and rejects (name -> category)."""

    root: Path
    write_wav: Callable[..., Path]
    corpus_path: Path | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejects: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.corpus_path or self.root

    def good(self, rel: str, uid: str, *, sample_rate: int = 16000, channels: int = 1, **expected: Any) -> Path:
        path = self.write_wav(self.root / rel, 0.4, sample_rate=sample_rate, channels=channels,
                              freq=150.0 + 10 * len(self.rows), seed=len(self.rows))
        self.rows[uid] = {"path": str(path), "sample_rate": sample_rate, "channels": channels, **expected}
        return path

    def corrupt(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEthis is not audio at all")
        self.rejects[path.name] = UNREADABLE
        return path

    def silent(self, rel: str) -> Path:
        path = self.write_wav(self.root / rel, 0.3, silent=True)
        self.rejects[path.name] = SILENT
        return path

    def bad(self, rel: str, category: str) -> Path:
        """A readable file that must be set aside for ``category`` (name-level problem)."""
        path = self.write_wav(self.root / rel, 0.3)
        self.rejects[path.name] = category
        return path


def build_emodb(t: Tree) -> Tree:
    t.good("wav/03a01Fa.wav", "emodb/03a01Fa", speaker="emodb/03", gender="m", emotion="happiness", raw_label="F", text_id="a01")
    t.good("wav/08b02Wb.wav", "emodb/08b02Wb", channels=2, speaker="emodb/08", gender="f", emotion="anger")
    t.good("wav/16a05Ta.flac", "emodb/16a05Ta", sample_rate=48000, speaker="emodb/16", gender="f", emotion="sadness")
    t.corrupt("wav/09a01La.wav")
    t.silent("wav/10a01Na.wav")
    t.bad("wav/11a01Xa.wav", UNKNOWN)
    t.bad("wav/readme_take1.wav", UNPARSEABLE)
    return t


def build_casia(t: Tree) -> Tree:
    t.good("liuchanhg/angry/201.wav", "casia/liuchanhg/angry/201", speaker="casia/liuchanhg", gender="f",
           emotion="anger", raw_label="angry", text_id="201")
    t.good("wangzhe/sad/202.wav", "casia/wangzhe/sad/202", channels=2, speaker="casia/wangzhe", gender="m", emotion="sadness")
    t.good("happy/203-happy-zhaoquanyin.flac", "casia/zhaoquanyin/happy/203", sample_rate=48000,
           speaker="casia/zhaoquanyin", emotion="happiness", text_id="203")
    t.corrupt("liuchanhg/fear/204.wav")
    t.silent("wangzhe/neutral/205.wav")
    t.bad("liuchanhg/bored/206.wav", UNKNOWN)
    t.bad("stray.wav", UNPARSEABLE)
    return t


def build_ravdess(t: Tree) -> Tree:
    t.good("Actor_01/03-01-05-02-01-02-01.wav", "ravdess/03-01-05-02-01-02-01", speaker="ravdess/Actor_01", gender="m",
           emotion="anger", raw_label="05", extra={"intensity": "strong", "statement": 1, "repetition": 2})
    t.good("Actor_02/03-01-03-01-02-01-02.flac", "ravdess/03-01-03-01-02-01-02", channels=2,
           speaker="ravdess/Actor_02", gender="f", emotion="happiness")
    t.good("Actor_03/03-01-02-01-01-01-03.wav", "ravdess/03-01-02-01-01-01-03", sample_rate=48000,
           speaker="ravdess/Actor_03", gender="m", emotion="calm")
    t.corrupt("Actor_01/03-01-01-01-01-01-01.wav")
    t.silent("Actor_02/03-01-02-01-01-01-02.wav")
    t.bad("Actor_01/03-01-09-01-01-01-01.wav", UNKNOWN)
    t.bad("Actor_01/notes.wav", UNPARSEABLE)
    t.bad("Actor_01/03-02-01-01-01-01-01.wav", "not audio-only speech")
    return t


def build_savee(t: Tree) -> Tree:
    t.good("DC_a01.wav", "savee/DC/a01", speaker="savee/DC", gender="m", emotion="anger", raw_label="a")
    t.good("AudioData/JE/sa02.wav", "savee/JE/sa02", channels=2, speaker="savee/JE", emotion="sadness", raw_label="sa")
    t.good("AudioData/KL/su03.flac", "savee/KL/su03", sample_rate=48000, speaker="savee/KL", emotion="surprise")
    t.corrupt("JK_h01.wav")
    t.silent("DC_n01.wav")
    t.bad("DC_x01.wav", UNKNOWN)
    t.bad("DC-a01-take.wav", UNPARSEABLE)
    return t


IEMOCAP_LABELS = {
    "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt": [
        ("Ses01F_impro01_F000", "neu"),
        ("Ses01F_impro01_M001", "exc"),
        ("Ses01F_impro01_M002", "ang"),
        ("Ses01F_impro01_F003", "sad"),
        ("Ses01F_impro01_F004", "xxx"),
    ],
    "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt": [
        ("Ses02M_script01_1_F002", "ang"),
        ("Ses02M_script01_1_M005", "zzz"),
        ("Ses02M_script01_1_M006", "fru"),
    ],
}


def write_iemocap_labels(root: Path) -> None:
    for rel, items in IEMOCAP_LABELS.items():
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i, (utt, label) in enumerate(items):
            lines += [f"[{i + 1.5:.4f} - {i + 3.25:.4f}]\t{utt}\t{label}\t[2.5000, 3.0000, 2.0000]",
                      "C-E1:\tNeutral state;\t()", ""]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))


def build_iemocap(t: Tree) -> Tree:
    write_iemocap_labels(t.root)
    s1 = "Session1/sentences/wav/Ses01F_impro01"
    s2 = "Session2/sentences/wav/Ses02M_script01_1"
    t.good(f"{s1}/Ses01F_impro01_F000.wav", "iemocap/Ses01F_impro01_F000", speaker="iemocap/Ses01F", gender="f",
           session="Ses01", emotion="neutral", raw_label="neu")
    t.good(f"{s1}/Ses01F_impro01_M001.wav", "iemocap/Ses01F_impro01_M001", channels=2, speaker="iemocap/Ses01M",
           gender="m", session="Ses01", emotion="excited", raw_label="exc")
    t.good(f"{s2}/Ses02M_script01_1_F002.flac", "iemocap/Ses02M_script01_1_F002", sample_rate=48000,
           speaker="iemocap/Ses02F", session="Ses02", emotion="anger")
    t.good(f"{s2}/Ses02M_script01_1_M006.wav", "iemocap/Ses02M_script01_1_M006", speaker="iemocap/Ses02M",
           session="Ses02", emotion="frustration")
    t.corrupt(f"{s1}/Ses01F_impro01_M002.wav")
    t.silent(f"{s1}/Ses01F_impro01_F003.wav")
    t.bad(f"{s2}/Ses02M_script01_1_M005.wav", UNKNOWN)
    t.bad(f"{s1}/random.wav", UNPARSEABLE)
    t.bad(f"{s1}/Ses01F_impro01_F004.wav", "no agreed label")
    t.bad(f"{s1}/Ses01F_impro01_F009.wav", "no label")
    # Whole-dialog recordings are outside sentences/wav and must be ignored, not rejected.
    t.write_wav(t.root / "Session1/dialog/wav/Ses01F_impro01.wav", 0.3)
    return t


def build_tess(t: Tree) -> Tree:
    t.good("OAF_angry/OAF_back_angry.wav", "tess/OAF_back_angry", speaker="tess/OAF", gender="f", emotion="anger", text_id="back")
    t.good("YAF_dog_ps.wav", "tess/YAF_dog_ps", channels=2, speaker="tess/YAF", emotion="surprise", raw_label="ps")
    t.good("YAF_fear/YAF_cat_fear.flac", "tess/YAF_cat_fear", sample_rate=48000, emotion="fear")
    t.corrupt("OAF_bean_sad.wav")
    t.silent("OAF_bath_neutral.wav")
    t.bad("OAF_boat_bored.wav", UNKNOWN)
    t.bad("OAF_back.wav", UNPARSEABLE)
    return t


def build_cremad(t: Tree) -> Tree:
    (t.root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,C,N\n1002,21,Female,C,N\n")
    t.good("AudioWAV/1001_DFA_ANG_XX.wav", "cremad/1001_DFA_ANG_XX", speaker="cremad/1001", gender="m", emotion="anger",
           text_id="DFA", extra={"level": "unspecified"})
    t.good("AudioWAV/1002_IEO_HAP_HI.wav", "cremad/1002_IEO_HAP_HI", channels=2, gender="f", emotion="happiness")
    t.good("AudioWAV/1091_TIE_SAD_LO.flac", "cremad/1091_TIE_SAD_LO", sample_rate=48000, gender="", emotion="sadness")
    t.corrupt("AudioWAV/1003_DFA_NEU_XX.wav")
    t.silent("AudioWAV/1004_DFA_FEA_XX.wav")
    t.bad("AudioWAV/1005_DFA_XYZ_XX.wav", UNKNOWN)
    t.bad("AudioWAV/1001-DFA.wav", UNPARSEABLE)
    return t


def build_csv(t: Tree) -> Tree:
    t.good("a/one.wav", "corpus/a/one", speaker="corpus/spkA", gender="m", emotion="anger", raw_label="angry", text_id="t1")
    t.good("b/two.flac", "corpus/b/two", sample_rate=48000, channels=2, speaker="corpus/spkB", gender="f", emotion="happiness")
    t.good("c/three.wav", "corpus/c/three", speaker="corpus/spkA", emotion="sadness", session="s2")
    t.corrupt("bad.wav")
    t.silent("quiet.wav")
    t.bad("grumpy.wav", UNKNOWN)
    t.write_wav(t.root.parent / "outside.wav", 0.3)
    t.rejects["outside.wav"] = "bad path"
    t.rejects["missing.wav"] = "missing file"
    (t.root / "notes.txt").write_text("not audio")
    t.rejects["notes.txt"] = UNPARSEABLE
    rows = [
        "path,emotion,speaker,session,text_id,gender",
        "a/one.wav,angry,spkA,,t1,male",
        "b/two.flac,happiness,spkB,,,F",
        "c/three.wav,Sadness,spkA,s2,,",
        "bad.wav,fear,spkB,,,",
        "quiet.wav,neutral,spkB,,,",
        "grumpy.wav,grumpy,spkB,,,",
        "../outside.wav,anger,spkB,,,",
        "missing.wav,anger,spkB,,,",
        "notes.txt,anger,spkB,,,",
    ]
    t.corpus_path = t.root / "corpus.csv"
    t.corpus_path.write_text("\n".join(rows) + "\n")
    return t


BUILDERS: dict[str, Callable[[Tree], Tree]] = {
    "emodb": build_emodb,
    "casia": build_casia,
    "ravdess": build_ravdess,
    "savee": build_savee,
    "iemocap": build_iemocap,
    "tess": build_tess,
    "cremad": build_cremad,
    "csv": build_csv,
}


