import copy
import json

import pytest

from parmana_lab import PolicyError, PolicyStore, load_policy_file, parse_policy

from .conftest import SAMPLE_POLICIES, write_policy

BASE = json.loads((SAMPLE_POLICIES / "loan-approval" / "1.0.0" / "policy.json").read_text())


def variant(**changes):
    doc = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return doc


def rule(cond, rid="r1", **outcome):
    out = {"action": "approve", "requires_override": False, "reason": "because"}
    out.update(outcome)
    return {"id": rid, "condition": cond, "outcome": out}


CATCH_ALL = rule({"all": []}, rid="default")


def test_all_samples_load_without_errors_or_warnings():
    store = PolicyStore(SAMPLE_POLICIES)
    loaded = store.scan()
    assert len(loaded) >= 5
    for policy in loaded:
        assert not isinstance(policy, PolicyError), policy
        assert policy.warnings == ()
    ids = {p.policyId for p in loaded}
    assert {"loan-approval", "claims-approval", "vendor-payment", "access-request"} <= ids
    assert store.versions("loan-approval") == ["1.0.0", "1.1.0", "1.2.0"]


def test_bundle_hash_is_stable_and_covers_the_whole_document():
    a = parse_policy(variant())
    b = parse_policy(json.loads(json.dumps(variant(), indent=4, sort_keys=True)))
    assert a.bundleHash == b.bundleHash  # formatting does not matter
    c = parse_policy(variant(description="edited"))
    assert c.bundleHash != a.bundleHash  # any content does


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ([1, 2], "POL-002"),
        (variant(rules=...), "POL-003"),
        (variant(signalsSchema=...), "POL-003"),
        (variant(schemaVersion="2.0.0"), "POL-004"),
        (variant(policyVersion="1.0"), "POL-007"),
        (variant(policyId="has space"), "POL-007"),
        (variant(extra=1), "POL-008"),
        (variant(signalsSchema={"x": {"type": "integer", "min": 1}}, rules=[CATCH_ALL]), "POL-008"),
        (variant(signalsSchema={"x": {"type": "float"}}, rules=[CATCH_ALL]), "POL-009"),
        (variant(signalsSchema={"x": {"type": "enum"}}, rules=[CATCH_ALL]), "POL-010"),
        (variant(signalsSchema={"x": {"type": "enum", "values": []}}, rules=[CATCH_ALL]), "POL-010"),
        (variant(signalsSchema={"x": {"type": "enum", "values": ["a", "a"]}}, rules=[CATCH_ALL]), "POL-010"),
        (variant(rules=[rule({"signal": "credit_score", "less_than": 1, "equals": 2})]), "POL-011"),
        (variant(rules=[rule({"all": [], "any": []})]), "POL-011"),
        (variant(rules=[rule({"all": {"signal": "employed", "equals": True}})]), "POL-011"),
        (variant(rules=[rule({"signal": "income", "greater_than": 1})]), "POL-012"),
        (variant(rules=[rule({"signal": "credit_score", "between": [1, 2]})]), "POL-013"),
        (variant(rules=[rule({"xor": []})]), "POL-013"),
        (variant(rules=[rule({"signal": "credit_score", "greater_than": "700"})]), "POL-014"),
        (variant(rules=[rule({"signal": "credit_score", "greater_than": 700.5})]), "POL-014"),
        (variant(rules=[rule({"signal": "employed", "equals": 1})]), "POL-014"),
        (variant(rules=[rule({"signal": "employed", "greater_than": True})]), "POL-014"),
        (variant(rules=[rule({"signal": "credit_score", "in": [1, True]})]), "POL-014"),
        (variant(rules=[rule({"all": []}, requires_override="no")]), "POL-015"),
        (variant(rules=[{"id": "r", "condition": {"all": []}, "outcome": {"action": "a", "reason": "r"}}]), "POL-015"),
        (variant(rules=[]), "POL-016"),
        (variant(rules=[rule({"all": []}, rid="same"), rule({"all": []}, rid="same")]), "POL-020"),
        (variant(rules=[{"id": "r", "outcome": {}}]), "POL-003"),
    ],
)
def test_invalid_policies_are_refused_with_their_code(doc, code):
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, source="test")
    assert info.value.code == code
    assert info.value.stage == "policy"
    assert str(info.value).startswith(f"[{code}@policy] test: ")


def test_enum_literal_must_be_an_allowed_value():
    doc = variant(
        signalsSchema={"tier": {"type": "enum", "values": ["gold", "silver"]}},
        rules=[rule({"signal": "tier", "equals": "bronze"}), CATCH_ALL],
    )
    with pytest.raises(PolicyError, match="POL-014"):
        parse_policy(doc)


def test_missing_catch_all_is_a_warning_not_an_error():
    policy = parse_policy(variant(rules=[rule({"signal": "credit_score", "greater_than": 1})]))
    assert [w.code for w in policy.warnings] == ["POL-021"]


def test_folder_must_match_id_and_version(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy_file(write_policy(tmp_path, BASE, folder_id="other-id"))
    assert info.value.code == "POL-005"
    with pytest.raises(PolicyError) as info:
        load_policy_file(write_policy(tmp_path, BASE, folder_version="9.9.9"))
    assert info.value.code == "POL-006"


def test_unparseable_files_and_unknown_versions(tmp_path):
    path = tmp_path / "loan-approval" / "1.0.0" / "policy.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"policyId": "a", "policyId": "b"}')
    store = PolicyStore(tmp_path)
    with pytest.raises(PolicyError) as info:
        store.get("loan-approval", "1.0.0")
    assert info.value.code == "POL-002" and "duplicate object key" in info.value.reason
    with pytest.raises(PolicyError) as info:
        store.get("loan-approval", "2.0.0")
    assert info.value.code == "POL-001" and "1.0.0" in info.value.reason
    with pytest.raises(PolicyError) as info:
        store.get("../etc", "1.0.0")
    assert info.value.code == "POL-001"


def test_scan_reports_each_broken_file_and_keeps_the_good_ones(tmp_path):
    write_policy(tmp_path, BASE)
    write_policy(tmp_path, variant(policyVersion="2.0.0", schemaVersion="0.9"))
    results = PolicyStore(tmp_path).scan()
    assert [type(r).__name__ for r in results] == ["Policy", "PolicyError"]
    assert results[1].code == "POL-004"
