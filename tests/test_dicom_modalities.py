"""DICOM as real modalities write it, each case in a file written with pydicom to the modality's pattern (and, where
pydicom's own test data hold one, the real file): MONOCHROME1 with Presentation LUT Shape INVERSE, a Modality LUT
Sequence, a dataset with no preamble and no file meta information, 12-bit JPEG Extended, a window that misses every
stored value, and Pixel Padding Value / Range Limit."""

from __future__ import annotations

import shutil
from pathlib import Path

import dicom_factory as make
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import LoadImage, ScaleIntensity
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset

from scripts.data.synthetic import synthetic_case
from scripts.io.dicom import RadiographDicomReader
from scripts.io.discovery import discover_inputs
from scripts.io.files import sniff_format


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    """12-bit stored values of a chest-like phantom, ``(rows, columns)``."""
    return synthetic_case(4)[0].astype(np.uint16) * 16


def read(path: Path) -> tuple[np.ndarray, dict]:
    reader = RadiographDicomReader()
    return reader.get_data(reader.read(str(path)))


def scaled(array) -> np.ndarray:
    return np.asarray(ScaleIntensity(minv=0.0, maxv=1.0)(torch.as_tensor(np.asarray(array, np.float32))))


def test_monochrome1_with_presentation_lut_shape_inverse_is_inverted_once(tmp_path, chest):
    """The standard's pairing for MONOCHROME1 (PS3.3 C.8.11.6: INVERSE, "output after inversion") is one
    inversion, not two; INVERSE on MONOCHROME2 inverts what is shown."""
    mono2, _ = read(make.save(make.radiograph(chest, bits_stored=12), tmp_path / "mono2.dcm"))
    ds = make.radiograph(4095 - chest, bits_stored=12, photometric="MONOCHROME1")
    ds.PresentationLUTShape = "INVERSE"
    mono1, meta = read(make.save(ds, tmp_path / "mono1_inverse.dcm"))
    np.testing.assert_allclose(scaled(mono1), scaled(mono2), atol=1e-6)
    assert "MONOCHROME1 inverted (Presentation LUT Shape INVERSE)" in meta["pixel_processing"]
    ds = make.radiograph(chest, bits_stored=12)
    ds.PresentationLUTShape = "INVERSE"
    inverted, _ = read(make.save(ds, tmp_path / "mono2_inverse.dcm"))
    np.testing.assert_allclose(scaled(inverted), 1 - scaled(mono2), atol=1e-6)
    ds.PresentationLUTShape = "IDENTITY"
    identity, _ = read(make.save(ds, tmp_path / "mono2_identity.dcm"))
    np.testing.assert_allclose(identity, mono2)


def test_a_modality_lut_sequence_maps_the_stored_values(tmp_path, chest):
    """A Modality LUT Sequence (as CR readers write it instead of a rescale) is applied before anything else, and a
    Rescale Slope beside it is not applied a second time."""
    lut = (np.sqrt(np.arange(4096) / 4095) * 4000).astype(np.uint16)
    ds = make.radiograph(chest, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "OD"
    item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUT Data
    ds.ModalityLUTSequence = [item]
    ds.RescaleSlope, ds.RescaleIntercept = 10, 5  # not allowed beside it; a reader must not apply both
    array, meta = read(make.save(ds, tmp_path / "modality_lut.dcm"))
    np.testing.assert_array_equal(array, lut[chest].T.astype(np.float32))
    assert "modality LUT" in meta["pixel_processing"] and "rescale" not in meta["pixel_processing"]


def raw_dataset(ds: Dataset, path: Path, implicit: bool) -> Path:
    """``ds`` as a bare dataset: no preamble, no ``DICM``, no file meta information (as older devices wrote them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        fp = pydicom.filebase.DicomFileLike(f)
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, ds)
    return path


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit VR", "explicit VR"])
def test_a_dataset_without_preamble_or_file_meta_is_found_and_read(tmp_path, chest, implicit):
    ds = make.radiograph(chest, bits_stored=12)
    path = raw_dataset(ds, tmp_path / "inputs" / "IM000001", implicit)  # no extension, as on media
    head = path.read_bytes()[:132]
    assert b"DICM" not in head and not path.suffix
    assert sniff_format(path) == "dicom"
    assert [(entry["kind"], entry["status"]) for entry in discover_inputs(str(tmp_path / "inputs"))] == [
        ("dicom", "pending")
    ]
    array, meta = read(path)
    np.testing.assert_array_equal(array, chest.T.astype(np.float32))
    assert meta["sop_instance_uid"] == ds.SOPInstanceUID


def test_a_window_that_misses_every_stored_value_is_ignored(tmp_path, chest):
    """A window far above the image's values (from another acquisition, or a rescale the window did not expect)
    would show every pixel black: it is ignored and named, and the image is read as without it."""
    plain, _ = read(make.save(make.radiograph(chest, bits_stored=12), tmp_path / "plain.dcm"))
    ds = make.radiograph(chest, bits_stored=12, window=(40000.0, 400.0))
    array, meta = read(make.save(ds, tmp_path / "missed.dcm"))
    np.testing.assert_array_equal(array, plain)
    assert "window 40000/400 LINEAR ignored (it maps every pixel" in meta["pixel_processing"]
    ds = make.radiograph(chest, bits_stored=12, window=(2000.0, 4000.0))  # a window that fits is still applied
    _, meta = read(make.save(ds, tmp_path / "fits.dcm"))
    assert "window 2000/4000 LINEAR" in meta["pixel_processing"] and "ignored" not in meta["pixel_processing"]


@pytest.mark.parametrize("with_range", [False, True], ids=["value", "value and range limit"])
def test_pixel_padding_is_kept_out_of_the_intensity_range(tmp_path, chest, with_range):
    """Padding outside the collimated field (here 0-5 where the real image starts at 400, and a value far below
    it) would stretch the intensity range and darken the radiograph: padding pixels are set to the darkest image
    value, so the image scales as if the padding were not there."""
    image = chest // 2 + 400
    padded = image.copy()
    padded[:, :20] = 3
    padded[:20, :] = 0
    ds = make.radiograph(padded, bits_stored=12)
    ds.PixelPaddingValue = 0
    if with_range:
        ds.PixelPaddingRangeLimit = 5
    else:
        padded[:, :20] = 0
        ds.PixelData = padded.astype(np.uint16).tobytes()
    array, meta = read(make.save(ds, tmp_path / "padded.dcm"))
    inside = (slice(20, None), slice(20, None))
    assert array.min() == image[inside].min()  # the padding is at the image's darkest value, no lower
    np.testing.assert_array_equal(array.T[inside], image[inside].astype(np.float32))
    assert "pixel padding" in meta["pixel_processing"] and "kept out of the intensity range" in meta["pixel_processing"]
    unpadded = make.radiograph(padded, bits_stored=12)  # the same pixels without the padding attributes
    plain, _ = read(make.save(unpadded, tmp_path / "plain.dcm"))
    assert plain.min() < array.min()


def jpeg_extended_12bit(tmp_path: Path) -> Path:
    """pydicom's real 12-bit JPEG Extended (process 4) file, ``JPEG-lossy.dcm``, as a DX radiograph: its scan header
    makes pylibjpeg's libjpeg refuse it, and pydicom does not give 12-bit JPEG Extended to GDCM."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGExtended12Bit and ds.BitsStored == 12
    ds.Modality = "DX"
    path = tmp_path / "jpeg_extended_12bit.dcm"
    ds.save_as(path)
    return path


def test_12_bit_jpeg_extended_that_pylibjpeg_cannot_decode_is_decoded_by_gdcm(tmp_path):
    pytest.importorskip("gdcm", reason="python-gdcm is a dependency of the bundle (setup.cfg): pip install python-gdcm")
    from pydicom.data import get_testdata_file

    path = jpeg_extended_12bit(tmp_path)
    with pytest.raises(Exception, match="libjpeg"):
        pydicom.dcmread(path).pixel_array
    array, meta = read(path)
    assert "decoded with GDCM" in meta["pixel_processing"]
    # the same image, written with a scan header pylibjpeg accepts (pydicom's JPGExtended.dcm): within one grey level
    reference = pydicom.dcmread(get_testdata_file("JPGExtended.dcm")).pixel_array
    assert array.shape == reference.T.shape
    assert np.abs(array - reference.T.astype(np.float32)).max() <= 1


def test_without_gdcm_the_reason_says_what_to_install(tmp_path, monkeypatch):
    """Where python-gdcm is missing, the file fails with pydicom's reasons and the package that decodes it."""
    path = jpeg_extended_12bit(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "gdcm", None)  # as if it were not installed
    with pytest.raises(ValueError, match="pip install python-gdcm") as error:
        read(path)
    assert "JPEG Extended" in str(error.value) and str(path) in str(error.value)


def test_the_real_file_is_segmented_by_the_bundle_reader(tmp_path):
    """Through MONAI's ``LoadImage`` with the bundle's reader, as the configs load it."""
    pytest.importorskip("gdcm", reason="pip install python-gdcm")
    from scripts.io.reader import RadiographReader

    source = jpeg_extended_12bit(tmp_path)
    path = shutil.copy(source, tmp_path / "copy.dcm")
    image = LoadImage(reader=RadiographReader(), image_only=True)(str(path))
    assert tuple(image.shape) == (256, 1024) and float(image.max()) > 0
