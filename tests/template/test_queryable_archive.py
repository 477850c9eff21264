"""The optional Glue table over the archive (the QueryableArchive=true setting), checked
against what terra-sink writes and what Terra sends: its location and
partition projection against the archive's key layout, its columns against
Terra's example payloads. Athena itself cannot run here, and moto's
CloudFormation creates neither Glue nor Athena resources."""

import datetime
import json
import pathlib
import re

from cfnlint.decode import cfn_yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = cfn_yaml.load(str(ROOT / "template.yaml"))
RESOURCES = TEMPLATE["Resources"]
DEFAULTS = TEMPLATE["Mappings"]["Defaults"]["Settings"]
TABLE = RESOURCES["ArchivePayloadsTable"]["Properties"]["TableInput"]
EXAMPLES = sorted((ROOT / "tests" / "fixtures" / "terra").glob("*.json"))
STORAGE_DOC = (ROOT / "docs" / "storage.md").read_text()


def parse_hive_type(text):
    """A Hive type string as a tree: 'string', ('array', t), ('struct', {name: t})."""

    def parse(i):
        for scalar in ("string", "boolean", "bigint", "double", "int"):
            if text.startswith(scalar, i) and not text[i + len(scalar) : i + len(scalar) + 1].isalnum():
                return scalar, i + len(scalar)
        if text.startswith("array<", i):
            inner, i = parse(i + len("array<"))
            assert text[i] == ">", text[i:]
            return ("array", inner), i + 1
        if text.startswith("struct<", i):
            i += len("struct<")
            fields = {}
            while True:
                name = re.match(r"[a-z_]+", text[i:]).group(0)
                assert text[i + len(name)] == ":", text[i:]
                field, i = parse(i + len(name) + 1)
                fields[name] = field
                if text[i] == ">":
                    return ("struct", fields), i + 1
                assert text[i] == ",", text[i:]
                i += 1
        raise AssertionError(f"unknown type at {text[i:]}")

    tree, end = parse(0)
    assert end == len(text), text[end:]
    return tree


COLUMNS = {c["Name"]: parse_hive_type(c["Type"]) for c in TABLE["StorageDescriptor"]["Columns"]}


def payloads():
    for path in EXAMPLES:
        value = json.loads(path.read_text())
        if isinstance(value, dict) and "type" in value and "url" not in value:
            yield path.name, value


def check(value, hive, where):
    """The Ion SerDe reads `value` into `hive` without a type error."""
    if value is None or hive == "string":
        return  # null fits anything; a string column takes any value as text
    if hive == "boolean":
        assert isinstance(value, bool), where
    elif hive[0] == "array":
        assert isinstance(value, list), where
        for i, element in enumerate(value):
            check(element, hive[1], f"{where}[{i}]")
    elif hive[0] == "struct":
        assert isinstance(value, dict), where
        for name, field in hive[1].items():
            check(value.get(name), field, f"{where}.{name}")
    else:
        raise AssertionError(f"{where}: {hive}")


def seen(value, hive, path, found):
    """Records every declared field path that some example carries."""
    if value is None or isinstance(hive, str):
        if value is not None:
            found.add(path)
        return
    if hive[0] == "array":
        for element in value:
            seen(element, hive[1], path + "[]", found)
    else:
        for name, field in hive[1].items():
            if name in value:
                seen(value[name], field, f"{path}.{name}", found)


def declared(hive, path, out):
    if isinstance(hive, str):
        out.add(path)
    elif hive[0] == "array":
        declared(hive[1], path + "[]", out)
    else:
        for name, field in hive[1].items():
            declared(field, f"{path}.{name}", out)


# Lab reports carry `data` as one object, not a list: the one shape the
# table cannot read. docs/storage.md says to leave them out of queries that read
# `data`.
DATA_AS_OBJECT = ("lab_report.completed", "lab_report.failed")


def test_every_example_payload_reads_into_the_columns():
    names = []
    for name, payload in payloads():
        names.append(name)
        for column, hive in COLUMNS.items():
            if column == "data" and payload["type"] in DATA_AS_OBJECT:
                assert isinstance(payload["data"], dict), name
                continue
            check(payload.get(column), hive, f"{name}: {column}")
    assert len(names) >= 20, names
    assert all(kind in STORAGE_DOC for kind in DATA_AS_OBJECT)


def test_every_declared_field_is_one_terra_sends():
    found, wanted = set(), set()
    for _, payload in payloads():
        for column, hive in COLUMNS.items():
            if column in payload:
                seen(payload[column], hive, column, found)
    for column, hive in COLUMNS.items():
        declared(hive, column, wanted)
    assert wanted - found == set(), "declared but in no example"


def test_the_envelope_is_the_columns():
    assert list(COLUMNS) == ["type", "version", "user", "data"]
    assert COLUMNS["data"][0] == "array"
    assert [k["Name"] for k in TABLE["PartitionKeys"]] == ["dt"]


def test_numbers_are_text_so_ints_and_floats_mix():
    leaves = set()
    declared(COLUMNS["data"], "data", leaves)
    numeric = {p for p in leaves if p.rsplit(".", 1)[1] in ("steps", "distance_meters", "upload_type")}
    assert numeric and all(
        "string" == leaf for leaf in [_leaf(COLUMNS["data"], p) for p in numeric]
    )


def _leaf(hive, path):
    for part in path.split(".")[1:]:
        hive = hive[1] if hive[0] == "array" else hive
        hive = hive[1][part]
    return hive


def test_the_ion_serde_reads_pretty_printed_json():
    serde = TABLE["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
    assert serde == "com.amazon.ionhiveserde.IonHiveSerDe"
    # Terra's bodies are archived as served, over many lines; the Hive and
    # OpenX SerDes read one document per line only.
    assert any(len(path.read_text().splitlines()) > 1 for path in EXAMPLES)


def sub_template(node):
    (text, variables) = node["Fn::Sub"]
    return text, variables


def test_partition_projection_follows_the_archive_layout():
    params = TABLE["Parameters"]
    assert params["projection.enabled"] == "true"
    assert params["projection.dt.type"] == "date"
    assert params["projection.dt.format"] == "yyyy-MM-dd"
    assert params["projection.dt.interval.unit"] == "DAYS"
    text, _ = sub_template(params["storage.location.template"])
    assert text == "s3://${Bucket}/${S3Prefix}dt=${!dt}/"
    root, _ = sub_template(TABLE["StorageDescriptor"]["Location"])
    assert text.startswith(root)

    # The documented example key lands in the partition its date names.
    example = re.search(r"Example: `([^`]+)`", STORAGE_DOC).group(1)
    prefix = DEFAULTS["S3Prefix"]
    date = datetime.date(2026, 7, 1)
    location = (
        text.replace("${Bucket}", "bucket")
        .replace("${S3Prefix}", prefix)
        .replace("${!dt}", date.strftime("%Y-%m-%d"))
    )
    assert ("s3://bucket/" + example).startswith(location), (example, location)
    # The layout docs/storage.md documents is the one the projection reads.
    assert "{TERRA_S3_PREFIX}dt={YYYY-MM-DD}/{id}.json" in STORAGE_DOC


def test_query_results_are_private_encrypted_and_expire():
    bucket = RESOURCES["AthenaResultsBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] <= 30
    workgroup = RESOURCES["ArchiveWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert workgroup["EnforceWorkGroupConfiguration"] is True
    # SSE-S3, or the stack's key with KmsKey (test_template.py checks the key).
    option = workgroup["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"]
    assert option == {"Fn::If": ["UseKey", "SSE_KMS", "SSE_S3"]}


def test_every_queryable_resource_needs_the_option_and_an_archive():
    for name in ("ArchiveDatabase", "ArchivePayloadsTable", "AthenaResultsBucket", "ArchiveWorkGroup"):
        assert RESOURCES[name]["Condition"] == "QueryableArchiveOn", name
    condition = TEMPLATE["Conditions"]["QueryableArchiveOn"]["Fn::And"]
    assert {"Condition": "HasBucket"} in condition
    assert DEFAULTS["QueryableArchive"] == "false"
