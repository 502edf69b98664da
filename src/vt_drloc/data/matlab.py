"""A minimal reader for MATLAB level-5 ``.mat`` files (numeric arrays only).

torchvision's SVHN (``train_32x32.mat``) and Flowers-102 (``imagelabels.mat``, ``setid.mat``)
ship their data in this format and torchvision reads it with ``scipy.io.loadmat``. scipy is not a
dependency of this project, and the files only hold plain numeric matrices, so this module reads
them directly, following MathWorks' "MAT-File Format" specification (level 5): a 128-byte header,
then data elements ``(type, nbytes, payload)``, where ``miCOMPRESSED`` elements hold a
zlib-compressed element and ``miMATRIX`` elements hold flags, dimensions, a name and the real part
stored column-major, possibly in a narrower type than the array's class.

Cells, structs, sparse and complex arrays are skipped (``load_mat`` omits them); MATLAB v7.3 files
(HDF5) are rejected with an explanation.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

# Data element types (miXXX) -> numpy dtype (without byte order).
_MI_DTYPES = {
    1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
}
_MI_MATRIX = 14
_MI_COMPRESSED = 15
# Array classes (mxXXX_CLASS) -> numpy dtype of the loaded array.
_MX_DTYPES = {
    6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8",
}


class MatFileError(ValueError):
    """A ``.mat`` file that is not a readable level-5 MAT file."""


def _read_tag(buf: bytes, pos: int, bo: str) -> tuple[int, int, int, bool]:
    """Return ``(type, nbytes, payload_start, small)`` of the element starting at ``pos``."""
    (first,) = struct.unpack_from(bo + "I", buf, pos)
    if first >> 16:  # small data element: type and size packed in 4 bytes, payload in the next 4
        return first & 0xFFFF, first >> 16, pos + 4, True
    mtype, nbytes = struct.unpack_from(bo + "II", buf, pos)
    return mtype, nbytes, pos + 8, False


def _elements(buf: bytes, bo: str, pos: int = 0):
    """Yield ``(type, payload_bytes)`` for each element in ``buf``, decompressing on the way."""
    while pos + 8 <= len(buf):
        mtype, nbytes, start, small = _read_tag(buf, pos, bo)
        payload = buf[start:start + nbytes]
        if small:
            pos += 8
        elif mtype == _MI_COMPRESSED:
            pos = start + nbytes  # compressed elements are not padded
            yield from _elements(zlib.decompress(payload), bo)
            continue
        else:
            pos = start + nbytes + (-nbytes % 8)  # payloads are padded to 8 bytes
        yield mtype, payload


def _parse_matrix(payload: bytes, bo: str) -> tuple[str, np.ndarray | None]:
    """Parse an ``miMATRIX`` payload into ``(name, array)``; array is ``None`` if unsupported."""
    subs = list(_elements(payload, bo))
    if len(subs) < 3:
        return "", None
    (_, flags_b), (_, dims_b), (_, name_b) = subs[:3]
    flags = struct.unpack_from(bo + "I", flags_b)[0]
    mx_class, is_complex = flags & 0xFF, bool(flags & 0x0800)
    dims = tuple(int(d) for d in np.frombuffer(dims_b, dtype=bo + "i4"))
    name = name_b.decode("latin-1")
    if mx_class not in _MX_DTYPES or is_complex or len(subs) < 4:
        return name, None
    real_type, real_b = subs[3]
    if real_type not in _MI_DTYPES:
        return name, None
    data = np.frombuffer(real_b, dtype=bo + _MI_DTYPES[real_type])
    expected = int(np.prod(dims)) if dims else 0
    if data.size != expected:
        raise MatFileError(f"array {name!r} holds {data.size} values, its dimensions {dims} need {expected}")
    array = data.astype(_MX_DTYPES[mx_class]).reshape(dims, order="F")
    return name, array


def load_mat(path: str | Path) -> dict[str, np.ndarray]:
    """Load the numeric arrays of a level-5 MAT file as ``{name: ndarray}`` (MATLAB shapes kept).

    Like ``scipy.io.loadmat(path)`` without ``squeeze_me``: a MATLAB row vector comes back with
    shape ``(1, n)`` and the array has the MATLAB class's dtype (``double`` -> float64).
    """
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 128:
        raise MatFileError(f"{path} is too short to be a MAT file ({len(buf)} bytes)")
    if buf[:19] == b"MATLAB 7.3 MAT-file" or buf[512:520] == b"\x89HDF\r\n\x1a\n":
        raise MatFileError(f"{path} is a MATLAB v7.3 (HDF5) file; save it with -v7 or read it with h5py")
    endian = buf[126:128]
    if endian == b"IM":
        bo = "<"
    elif endian == b"MI":
        bo = ">"
    else:
        raise MatFileError(f"{path} is not a level-5 MAT file (no 'IM'/'MI' endian marker at byte 126)")
    out: dict[str, np.ndarray] = {}
    try:
        for mtype, payload in _elements(buf, bo, pos=128):
            if mtype == _MI_MATRIX:
                name, array = _parse_matrix(payload, bo)
                if array is not None:
                    out[name] = array
    except (struct.error, zlib.error) as exc:
        raise MatFileError(f"{path} is truncated or corrupt: {exc}") from exc
    return out


def save_mat(path: str | Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Write numeric arrays as a level-5 MAT file (little-endian), as MATLAB's ``save -v7`` does.

    Used by the tests to build SVHN / Flowers-102 fixtures in torchvision's on-disk format.
    """
    mx_of = {np.dtype(v): k for k, v in _MX_DTYPES.items()}
    mi_of = {np.dtype(v): k for k, v in _MI_DTYPES.items()}

    def element(mtype: int, data: bytes) -> bytes:
        return struct.pack("<II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)

    header = b"MATLAB 5.0 MAT-file, written by vt_drloc".ljust(116, b" ")
    header += b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    body = b""
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.ndim < 2:
            array = array.reshape(1, -1)
        dtype = array.dtype.newbyteorder("=")
        if dtype not in mx_of:
            raise TypeError(f"save_mat: unsupported dtype {array.dtype} for {name!r}")
        flags = struct.pack("<II", mx_of[dtype], 0)
        dims = np.asarray(array.shape, dtype="<i4").tobytes()
        real = np.asarray(array, dtype=dtype.newbyteorder("<")).tobytes(order="F")
        matrix = (element(6, flags) + element(5, dims) + element(1, name.encode("latin-1"))
                  + element(mi_of[dtype], real))
        elem = element(_MI_MATRIX, matrix)
        if compress:
            packed = zlib.compress(elem)
            elem = struct.pack("<II", _MI_COMPRESSED, len(packed)) + packed
        body += elem
    Path(path).write_bytes(header + body)
