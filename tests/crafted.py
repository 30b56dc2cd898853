"""Crafted hostile image files for the hardening tests (decompression bombs, damaged DICOM headers, PHI).

Every function writes one small file and returns its path. Nothing here needs the real data folder.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

FAKE_NAME = "Zzfakename^Quentin"  # a patient name that must never reach the console or a log
FAKE_ID = "PHI-ID-73519"
FAKE_BIRTH = "19231231"


def dicom(path: Path, pixels: np.ndarray | None = None, syntax: str = "1.2.840.10008.1.2.1",
          raw: dict | None = None, **tags) -> Path:
    """A small valid DICOM (explicit VR little endian, MONOCHROME2, 8 bit) with ``tags`` set on top.

    ``raw`` maps a DS/IS keyword to the bytes written as its value, even invalid ones (``b"abc "``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    pixels = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32) if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = FAKE_NAME, FAKE_ID, FAKE_BIRTH
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "OT", "MONOCHROME2", 1
    ds.Rows, ds.Columns = pixels.shape[-2:]  # (frames, H, W) too: set NumberOfFrames in tags
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    for key, value in (raw or {}).items():  # stored unconverted: written byte for byte
        tag = Tag(tag_for_keyword(key))
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def j2k_codestream(height: int, width: int) -> bytes:
    """A real 32x32 JPEG 2000 codestream whose SIZ header is rewritten to declare ``height`` x ``width``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="JPEG2000", no_jp2=True)
    data = bytearray(buf.getvalue())
    siz = data.find(b"\xff\x4f\xff\x51") + 2
    struct.pack_into(">IIII", data, siz + 6, width, height, 0, 0)  # Xsiz, Ysiz, XOsiz, YOsiz
    struct.pack_into(">II", data, siz + 22, width, height)  # one tile as large as the image
    return bytes(data)


def j2k_bomb_dicom(path: Path, side: int = 16000) -> Path:
    """A ~1 KB DICOM whose header says 32x32 but whose JPEG 2000 codestream declares ``side`` x ``side``."""
    from pydicom.encaps import encapsulate

    ds_path = dicom(path)
    import pydicom

    ds = pydicom.dcmread(ds_path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = encapsulate([j2k_codestream(side, side)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def rle_header_bomb(path: Path, side: int = 65535) -> Path:
    """An RLE DICOM whose own header declares ``side`` x ``side`` pixels (4 GB decoded) in a few bytes."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(dicom(path))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    ds.Rows = ds.Columns = side
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    ds.PixelData = encapsulate([header + b"\x81\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def png_bomb(path: Path, side: int = 13000, rows: int = 64) -> Path:
    """A small PNG whose IHDR declares ``side`` x ``side`` 8-bit grey pixels (first ``rows`` rows stored)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * ((side + 1) * rows), 9)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return Path(path)


def png(path: Path, side: int = 32, height: int | None = None) -> Path:
    """A plain 8-bit grey PNG of ``height`` x ``side`` pixels (a gradient)."""
    from PIL import Image

    h = height or side
    Image.fromarray((np.arange(h * side) % 251).astype(np.uint8).reshape(h, side)).save(path)
    return Path(path)


def not_a_transfer_syntax(path: Path) -> Path:
    """A DICOM whose TransferSyntaxUID is a valid UID but no transfer syntax ("UID is not a transfer syntax")."""
    data = dicom(path).read_bytes()
    assert data.count(b"1.2.840.10008.1.2.1\x00") == 1
    Path(path).write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.5.1.4\x00"))
    return Path(path)


def mutate(data: bytes, rng: np.random.Generator, n_edits: int = 3) -> bytes:
    """A seeded random mutation of a file: byte flips, random overwrites, truncation, chunk deletion/duplication."""
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, n_edits + 1))):
        kind, at = int(rng.integers(0, 6)), int(rng.integers(0, max(len(buf), 1)))
        if kind == 0 and buf:
            buf[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1 and buf:
            size = int(rng.integers(1, 9))
            buf[at:at + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        elif kind == 2:
            del buf[at:]
        elif kind == 3:
            del buf[at:at + int(rng.integers(1, 64))]
        elif kind == 4:
            buf[at:at] = buf[at:at + int(rng.integers(1, 64))]
        else:  # a length or size field set to an extreme value
            extremes = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\x00\x00", b"\x00\x80\x00\x00"]
            buf[at:at + 4] = extremes[int(rng.integers(0, 4))]
    return bytes(buf)


def phi_in_damaged_meta(path: Path) -> Path:
    """A DICOM whose TransferSyntaxUID length field is damaged so that its value swallows the rest of the
    file, patient name included: pydicom's validation warning then quotes the name (as it did for 2 of
    2000 random header mutations)."""
    data = bytearray(dicom(path).read_bytes())
    at = data.find(b"\x02\x00\x10\x00UI")
    struct.pack_into("<H", data, at + 6, 0x7FFE)
    Path(path).write_bytes(bytes(data))
    return Path(path)
