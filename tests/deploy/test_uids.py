from medtl.deploy.uids import derived_uid, is_valid_uid, safe_name


def test_uid_grammar():
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.88.33")
    assert is_valid_uid("2.25.0")
    for bad in ["", "1", "1..2", "1.02", "1.2.", ".1.2", "1.2.3a", "../../etc/passwd", "1.2/3", "1.2\x00",
                "1." + "1" * 64, None, 12]:
        assert not is_valid_uid(bad), bad


def test_safe_name_never_carries_a_path():
    assert safe_name("1.2.3") == "1.2.3"
    for hostile in ["../../etc/passwd", "/abs/path", "a\\b", "1.2.3/../../x", "\u202e.dcm", ""]:
        name = safe_name(hostile)
        assert name.startswith("h-") and len(name) == 34 and name[2:].isalnum()
    assert safe_name("../x") == safe_name("../x") != safe_name("../y")


def test_derived_uid_is_stable_and_valid():
    a = derived_uid("1.2.3", "model", "v1")
    assert a == derived_uid("1.2.3", "model", "v1") != derived_uid("1.2.3", "model", "v2")
    assert is_valid_uid(a) and a.startswith("2.25.")
