"""The FAKE Kubernetes API (tests/fake_kube.py) patches as the real API server does, or the deployer tests
that rely on it would prove nothing: a JSON merge patch as RFC 7386 defines it (its Appendix A examples)."""

from __future__ import annotations

import pytest
from fake_kube import FakeCustomObjectsApi, merge_patch
from kubernetes.client.exceptions import ApiException

RFC_7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7386_EXAMPLES)
def test_merge_patch_follows_rfc_7386(target, patch, result):
    assert merge_patch(target, patch) == result


def test_the_fake_merges_a_patch_into_the_stored_object_and_404s_a_missing_one():
    api = FakeCustomObjectsApi()
    key = ("g", "v1", "ns", "things", "x")
    api.create_namespaced_custom_object("g", "v1", "ns", "things",
                                        {"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}},
                                         "spec": {"keep": True, "items": [1, 2]}})
    api.patch_namespaced_custom_object(*key, {"metadata": {"labels": {"b": None}}, "spec": {"items": [3]}})
    assert api.objects[key] == {"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"keep": True, "items": [3]}}
    with pytest.raises(ApiException) as missing:
        api.patch_namespaced_custom_object("g", "v1", "ns", "things", "y", {"spec": {}})
    assert missing.value.status == 404
