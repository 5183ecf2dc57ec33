"""List files: both formats, auto-detection, class names, and errors that name file and line."""

import pytest

from msca.data.lists import (
    ListFormatError,
    VideoRecord,
    check_labels,
    class_names_from_folders,
    format_list,
    parse_class_names,
    parse_list,
)


def test_msca_comma_format():
    vl = parse_list("k400/frames331_train/abseiling/vid1,300,0\n\nk400/frames331_train/air drumming/v2,250,1\n")
    assert vl.records == [
        VideoRecord("k400/frames331_train/abseiling/vid1", 300, 0),
        VideoRecord("k400/frames331_train/air drumming/v2", 250, 1),
    ]
    assert vl.class_names is None
    assert class_names_from_folders(vl.records) == ["abseiling", "air drumming"]


def test_tokshift_space_format_and_paths_with_spaces():
    vl = parse_list("a/x/v1 10 1\n# comment\na/y z/v2  12  0\n")
    assert [(r.path, r.num_frames, r.label) for r in vl.records] == [("a/x/v1", 10, 1), ("a/y z/v2", 12, 0)]


def test_name_labels_map_to_sorted_indices():
    vl = parse_list("t/b/v1,5,zebra\nt/a/v2,6,ant\nt/a/v3,7,ant\n")
    assert vl.class_names == ["ant", "zebra"]
    assert [r.label for r in vl.records] == [1, 0, 0]


def test_subset_keeps_every_tenth():
    text = "".join(f"p/c/v{i},10,0\n" for i in range(25))
    assert [r.path for r in parse_list(text, use_subset=True).records] == ["p/c/v0", "p/c/v10", "p/c/v20"]


@pytest.mark.parametrize(
    "text,line,what",
    [
        ("a/v,10,0\nb/v,ten,1\n", 2, "not an integer"),
        ("a/v,10,0\n\nb/v,10\n", 3, "expected 'path,frame_count,label'"),
        ("a/v 10 0\nb/v 10\n", 2, "expected 'path frame_count label'"),
        ("a/v,10,0\nb/v,-3,1\n", 2, "negative frame count"),
        ("a/v,10,0\nb/v,3,cat\n", 1, "mixes"),
        ("a/v,10,-1\n", 1, "negative label"),
    ],
)
def test_malformed_lines_name_file_and_line(text, line, what):
    with pytest.raises(ListFormatError, match=f"lists/train.txt:{line}: .*{what}"):
        parse_list(text, source="lists/train.txt")


def test_roundtrip_and_classes_file():
    recs = [VideoRecord("a/b/c", 3, 1), VideoRecord("d/e", 4, 0)]
    assert parse_list(format_list(recs)).records == recs
    assert parse_list(format_list(recs, comma=False)).records == recs
    assert parse_class_names("cat\ndog\n\n") == ["cat", "dog"]
    assert parse_class_names("0,cat\n1,hot dog\n") == ["cat", "hot dog"]
    assert class_names_from_folders([VideoRecord("s/a/v", 1, 0), VideoRecord("s/b/v", 1, 0)]) is None


def test_frame_name_format_accepts_python_and_printf_styles():
    from msca.data.lists import frame_name_format

    assert frame_name_format("img_{:05d}.jpg").format(7) == "img_00007.jpg"
    assert frame_name_format("img_%05d.jpg").format(7) == "img_00007.jpg"
    assert frame_name_format("%06d.jpg").format(12) == "000012.jpg"
    for bad in ("img.jpg", "img_{}.jpg{", "img_{name}.jpg"):
        with pytest.raises(ValueError, match="data.frame_format"):
            frame_name_format(bad)


def test_label_out_of_range_names_file_and_line():
    vl = parse_list("# header\nt/a/v1,5,0\n\nt/b/v2,5,3\nt/c/v3,5,1\n", source="s3://b/train.txt")
    check_labels(vl, 4, "classes.txt")
    with pytest.raises(
        ListFormatError, match=r"^s3://b/train\.txt:4: label 3 but only 3 classes \(from classes\.txt\)"
    ):
        check_labels(vl, 3, "classes.txt")
    sub = parse_list("".join(f"p/c/v{i},10,{i}\n" for i in range(25)), source="l.txt", use_subset=True)
    with pytest.raises(ListFormatError, match=r"^l\.txt:21: label 20"):  # the subset keeps line numbers
        check_labels(sub, 20, "x")
