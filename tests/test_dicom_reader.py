"""The radiograph DICOM reader on real files written with pydicom: layout identical to MONAI's PILReader for PNG,
display pipeline (Modality LUT, VOI, MONOCHROME1), bit depths, compressed syntaxes, colour, spacing, clear errors."""

import re
from pathlib import Path

import dicom_factory as make
import numpy as np
import pydicom
import pytest
import torch
from monai.data import PILReader, list_data_collate
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Resized, ScaleIntensity
from PIL import Image

from scripts.data.synthetic import synthetic_case
from scripts.io.dicom import RadiographDicomReader, pixel_spacing
from scripts.io.files import sniff_format
from scripts.io.reader import RadiographReader


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """An asymmetric phantom (heart on the image's right) with more rows than columns."""
    seed = next(s for s in range(100) if (lambda shape: shape[0] - shape[1] > 60)(synthetic_case(s)[0].shape))
    return synthetic_case(seed)[0]


def load(path: Path, reader=None) -> np.ndarray:
    return np.asarray(LoadImage(reader=reader or RadiographDicomReader(), image_only=True)(str(path)))


def scaled(array) -> np.ndarray:
    return np.asarray(ScaleIntensity(minv=0.0, maxv=1.0)(torch.as_tensor(np.asarray(array, np.float32))))


def test_dicom_and_png_of_the_same_pixels_load_identically(tmp_path, phantom):
    Image.fromarray(phantom).save(tmp_path / "phantom.png")
    dicom = make.save(make.radiograph(phantom), tmp_path / "IM0001")  # no extension: recognised by content
    from_png = load(tmp_path / "phantom.png", PILReader())
    from_dicom = load(dicom)
    rows, columns = phantom.shape
    assert from_dicom.shape == from_png.shape == (columns, rows)  # MONAI (x, y): PILReader transposes, so must we
    np.testing.assert_array_equal(from_dicom, from_png)
    np.testing.assert_array_equal(from_dicom, phantom.T)
    assert from_dicom[0, 0] == phantom[0, 0] and from_dicom[columns - 1, 0] == phantom[0, columns - 1]


def test_monochrome1_gives_the_monochrome2_image(tmp_path, phantom):
    stored = phantom.astype(np.uint16) * 16
    mono2 = load(make.save(make.radiograph(stored, bits_stored=12), tmp_path / "mono2.dcm"))
    mono1 = load(
        make.save(make.radiograph(4095 - stored, bits_stored=12, photometric="MONOCHROME1"), tmp_path / "mono1.dcm")
    )
    np.testing.assert_allclose(scaled(mono1), scaled(mono2), atol=1e-6)
    assert not np.allclose(scaled(4095 - stored.T), scaled(mono2))  # the stored values really were inverted


@pytest.mark.parametrize(
    "bits, signed, offset, slope, intercept",
    [
        (12, False, 100, 0.25, -5.0),
        (12, True, -1500, 1.0, -100.0),
        (16, True, -20000, 2.0, 3.0),
        (16, False, 30000, 1.0, -1024.0),
        (8, True, -128, 1.0, 0.0),
        (10, False, 0, 0.5, 0.0),
    ],
)
def test_modality_lut_and_bit_depths(tmp_path, phantom, bits, signed, offset, slope, intercept):
    stored = phantom.astype(np.int64) * (2 ** (bits - 8) - 1 if bits > 8 else 1) // 2 + offset
    assert stored.min() >= (-(2 ** (bits - 1)) if signed else 0) and stored.max() < 2 ** (bits - int(signed))
    ds = make.radiograph(stored, bits_stored=bits, signed=signed, slope=slope, intercept=intercept)
    array, meta = RadiographDicomReader().get_data(RadiographDicomReader().read(make.save(ds, tmp_path / "x.dcm")))
    np.testing.assert_allclose(array, (stored * slope + intercept).T.astype(np.float32), rtol=1e-6)
    assert array.dtype == np.float32
    assert f"slope {slope:g} intercept {intercept:g}" in meta["pixel_processing"]


def test_voi_window_is_applied_before_monochrome1_inversion(tmp_path):
    stored = np.tile(np.arange(0, 4096, 8, dtype=np.uint16), (30, 1))  # a ramp over the 12-bit range
    center, width = 1000.0, 400.0
    expected = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # DICOM PS3.3 C.11.2.1.2.1, linear
    for photometric, want in (("MONOCHROME2", expected), ("MONOCHROME1", 1 - expected)):
        ds = make.radiograph(stored, bits_stored=12, window=(center, width), photometric=photometric)
        array = load(make.save(ds, tmp_path / f"{photometric}.dcm"))
        np.testing.assert_allclose(scaled(array), want.T, atol=1e-3)


def test_voi_lut_sequence_is_applied(tmp_path):
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (20, 1))
    lut = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    ds = make.radiograph(stored, bits_stored=12, voi_lut=lut)
    array, meta = RadiographDicomReader().get_data(RadiographDicomReader().read(make.save(ds, tmp_path / "lut.dcm")))
    np.testing.assert_array_equal(array, lut[stored].T.astype(np.float32))
    assert "VOI LUT" in meta["pixel_processing"]


LOSSLESS = {
    "RLE Lossless": lambda v: make.compressed(make.radiograph(v, bits_stored=12), pydicom.uid.RLELossless),
    "JPEG-LS Lossless": lambda v: make.compressed(make.radiograph(v, bits_stored=12), pydicom.uid.JPEGLSLossless),
    "JPEG 2000 Lossless": lambda v: make.compressed(make.radiograph(v, bits_stored=12), pydicom.uid.JPEG2000Lossless),
    "JPEG Lossless SV1": lambda v: make.jpeg_lossless_sv1(v, bits_stored=12),
}


@pytest.mark.parametrize("syntax", sorted(LOSSLESS))
def test_lossless_compressed_syntaxes_decode_exactly(tmp_path, phantom, syntax):
    stored = phantom.astype(np.uint16) * 16 + np.random.default_rng(0).integers(0, 16, phantom.shape, dtype=np.uint16)
    path = make.save(LOSSLESS[syntax](stored), tmp_path / "compressed")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(load(path), stored.T.astype(np.float32))


def test_jpeg_baseline_decodes_close_to_the_original(tmp_path, phantom):
    path = make.save(make.jpeg_baseline(phantom, quality=95), tmp_path / "baseline.dcm")
    difference = np.abs(load(path) - phantom.T.astype(np.float32))
    assert difference.mean() < 2.0 and difference.max() < 40


def test_colour_secondary_captures_become_grey(tmp_path, phantom):
    grey_rgb = np.repeat(phantom[..., None], 3, axis=2)
    np.testing.assert_array_equal(
        load(make.save(make.rgb_secondary_capture(grey_rgb), tmp_path / "sc.dcm")), phantom.T.astype(np.float32)
    )
    tinted = (grey_rgb * np.array([1.0, 0.8, 0.5])).astype(np.uint8)
    pil_grey = np.asarray(Image.fromarray(tinted, "RGB").convert("L"))  # what the PNG path gives for this RGB image
    np.testing.assert_array_equal(load(make.save(make.rgb_secondary_capture(tinted), tmp_path / "t.dcm")), pil_grey.T)
    ybr = load(make.save(make.jpeg_baseline(grey_rgb), tmp_path / "ybr.dcm"))  # YBR_FULL_422 JPEG
    assert ybr.shape == phantom.T.shape and np.abs(ybr - phantom.T).mean() < 2.5


def test_pixel_spacing_comes_from_pixel_spacing_then_imager_pixel_spacing(tmp_path, phantom):
    both = make.radiograph(phantom, pixel_spacing=(0.2, 0.1), imager_pixel_spacing=(0.25, 0.125))
    assert pixel_spacing(both) == ((0.2, 0.1), "PixelSpacing")
    imager = make.radiograph(phantom, imager_pixel_spacing=(0.25, 0.125))
    detector = "ImagerPixelSpacing (detector plane, no EstimatedRadiographicMagnificationFactor)"
    assert pixel_spacing(imager) == ((0.25, 0.125), detector)
    for bad in ([0, 0.1], [0.1, -1], [0.1, 0.1, 0.1]):
        ds = make.radiograph(phantom)
        ds.PixelSpacing = bad
        spacing, source = pixel_spacing(ds)
        assert spacing is None and source.startswith("none: PixelSpacing") and "not two positive numbers" in source
    # an unusable PixelSpacing falls back to ImagerPixelSpacing and says so
    both.PixelSpacing = [0, 0]
    spacing, source = pixel_spacing(both)
    assert spacing == (0.25, 0.125) and source.startswith("ImagerPixelSpacing") and "PixelSpacing '0.0\\0.0'" in source
    _, meta = RadiographDicomReader().get_data(RadiographDicomReader().read(make.save(imager, tmp_path / "s.dcm")))
    np.testing.assert_array_equal(meta["pixel_spacing"], [0.25, 0.125])
    np.testing.assert_array_equal(np.diag(meta["affine"])[:2], [0.125, 0.25])  # x runs along a row: column spacing
    assert meta["spacing_source"] == detector


def test_imager_pixel_spacing_is_corrected_to_the_patient_plane(phantom):
    """PS3.3 C.8.11.7: Imager Pixel Spacing is at the detector; the Estimated Radiographic Magnification Factor gives
    the spacing at the patient. Pixel Spacing is already calibrated and is not corrected again."""
    magnified = make.radiograph(phantom, imager_pixel_spacing=(0.2, 0.15))
    magnified.EstimatedRadiographicMagnificationFactor = 1.25
    spacing, source = pixel_spacing(magnified)
    np.testing.assert_allclose(spacing, (0.16, 0.12))
    assert source == "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor 1.25 (patient plane)"
    magnified.PixelSpacing = [0.3, 0.3]
    assert pixel_spacing(magnified) == ((0.3, 0.3), "PixelSpacing")
    for bad in (0, -1.1, "NaN"):
        ds = make.radiograph(phantom, imager_pixel_spacing=(0.2, 0.15))
        ds.EstimatedRadiographicMagnificationFactor = bad
        spacing, source = pixel_spacing(ds)
        assert spacing == (0.2, 0.15) and "detector plane" in source and "ignored" in source


def test_errors_name_the_file_and_the_problem(tmp_path, phantom):
    reader = RadiographReader()
    good = make.save(make.radiograph(phantom.astype(np.uint16), bits_stored=12), tmp_path / "good.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    frames = make.save(make.radiograph(np.stack([phantom] * 3)), tmp_path / "frames.dcm")
    report = make.save(make.structured_report(), tmp_path / "report.dcm")
    cases = {
        truncated: "pixel data",
        empty: "empty file",
        frames: "multi-frame image (3 frames",
        report: "structured report or key-object selection",
    }
    for path, problem in cases.items():
        with pytest.raises(ValueError, match=re.escape(problem)) as error:
            reader.get_data(reader.read(str(path)))
        assert str(path) in str(error.value)


def test_formats_are_recognised_by_content(tmp_path, phantom):
    dicom = make.save(make.radiograph(phantom), tmp_path / "no_extension")
    png = tmp_path / "image.png"
    Image.fromarray(phantom).save(png)
    jpeg_named_png = tmp_path / "really_a_jpeg.png"
    Image.fromarray(phantom).save(jpeg_named_png, format="JPEG", quality=95)
    (tmp_path / "notes.dcm").write_text("not a DICOM file")
    assert RadiographDicomReader().verify_suffix(str(dicom)) and not RadiographDicomReader().verify_suffix(str(png))
    assert [sniff_format(p) for p in (dicom, png, jpeg_named_png)] == ["dicom", "png", "jpeg"]
    assert np.abs(load(jpeg_named_png, RadiographReader()) - phantom.T).mean() < 3
    with pytest.raises(ValueError, match="notes.dcm: not a DICOM file"):
        RadiographReader().get_data(RadiographReader().read(str(tmp_path / "notes.dcm")))


def test_dicom_png_and_nifti_items_share_a_batch(tmp_path, phantom):
    import nibabel

    Image.fromarray(phantom).save(tmp_path / "a.png")
    make.save(make.radiograph(phantom, imager_pixel_spacing=(0.2, 0.2)), tmp_path / "b.dcm")
    nibabel.save(nibabel.Nifti1Image(phantom.T[:, :, None], np.diag([0.3, 0.3, 1, 1])), tmp_path / "c.nii.gz")
    load_items = Compose(
        [
            LoadImaged("image", reader=RadiographReader(), image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            Resized("image", spatial_size=(32, 32), mode="area"),
        ]
    )
    items = [load_items({"image": str(tmp_path / n)}) for n in ("a.png", "b.dcm", "c.nii.gz")]
    for item in items:
        np.testing.assert_array_equal(item["image"].meta["spatial_shape"], phantom.T.shape)
    batch = list_data_collate(items)
    assert batch["image"].shape == (3, 1, 32, 32)
    spacing = np.asarray(batch["image"].meta["pixel_spacing"])
    assert np.isnan(spacing[0]).all() and np.allclose(spacing[1:], [[0.2, 0.2], [0.3, 0.3]])
    assert list(batch["image"].meta["format"]) == ["PNG", "DICOM", "NIFTI"]
