"""Sealed secrets: what opens, what does not, where the keys come from."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispbill_core.sealing import (
    KEY_ENV,
    KEY_FILE_ENV,
    Keyring,
    SealingError,
    is_sealed,
    key_id,
    new_key,
    write_new_key_file,
)

pytestmark = pytest.mark.unit

KEY_A = os.urandom(64)
KEY_B = os.urandom(64)


@given(secret=st.binary(max_size=300), context=st.text(max_size=60))
def test_what_is_sealed_opens_for_its_context_and_the_same_input_seals_the_same(
    secret: bytes, context: str
) -> None:
    keyring = Keyring([KEY_A])
    sealed = keyring.seal(secret, context)
    assert is_sealed(sealed)
    assert keyring.open(sealed, context) == secret
    assert keyring.seal(secret, context) == sealed  # deterministic: commands stay idempotent


def test_a_sealed_secret_does_not_open_for_another_nas() -> None:
    keyring = Keyring([KEY_A])
    sealed = keyring.seal(b"testing123", "nas:edge-1")
    with pytest.raises(SealingError, match="does not open for 'nas:edge-2'"):
        keyring.open(sealed, "nas:edge-2")
    assert keyring.seal(b"testing123", "nas:edge-2") != sealed


@pytest.mark.parametrize("byte", [0, 15, 16, -1])  # the synthetic IV, and the ciphertext
def test_an_altered_sealed_value_does_not_open(byte: int) -> None:
    keyring = Keyring([KEY_A])
    head, _, payload = keyring.seal(b"testing123", "nas:edge-1").rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[byte] ^= 0x01
    altered = f"{head}:{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"
    with pytest.raises(SealingError, match="altered, or sealed for something else"):
        keyring.open(altered, "nas:edge-1")


def test_rotation_the_first_key_seals_and_every_key_opens() -> None:
    old = Keyring([KEY_A])
    rotated = Keyring([KEY_B, KEY_A])
    sealed_before = old.seal(b"s1", "nas:a")
    sealed_after = rotated.seal(b"s2", "nas:b")
    assert f":{key_id(KEY_B)}:" in sealed_after
    assert rotated.open(sealed_before, "nas:a") == b"s1"
    assert rotated.open(sealed_after, "nas:b") == b"s2"
    with pytest.raises(SealingError, match=f"sealed with key {key_id(KEY_B)}, which is not"):
        old.open(sealed_after, "nas:b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "64 random bytes in base64, not 5 bytes"),
    ],
)
def test_a_keyring_that_is_not_one_is_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(SealingError, match=message):
        Keyring.from_text(text, source="ISPBILL_SECRETS_KEY")


def test_keys_are_read_from_commas_lines_and_comments() -> None:
    a, b = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()
    assert Keyring.from_text(f"{a}, {b}").key_ids == [key_id(KEY_A), key_id(KEY_B)]
    assert Keyring.from_text(f"{a} {b}").key_ids == [key_id(KEY_A), key_id(KEY_B)]
    keyring = Keyring.from_text(f"# new one first\n{b}\n\n{a}  # the old one\n")
    assert keyring.sealing_key_id == key_id(KEY_B)
    assert keyring.key_ids == [key_id(KEY_B), key_id(KEY_A)]


def test_not_a_sealed_value() -> None:
    with pytest.raises(SealingError, match="not a sealed value"):
        Keyring([KEY_A]).open("testing123", "nas:x")
    with pytest.raises(SealingError, match="missing its key id"):
        Keyring([KEY_A]).open("sealed:v1:abc", "nas:x")


def test_the_environment_comes_before_the_key_file_and_the_default(tmp_path: Path) -> None:
    a, b = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()
    key_file = tmp_path / "k"
    key_file.write_text(b + "\n")
    default = tmp_path / "data" / "secrets.key"
    both = {KEY_ENV: a, KEY_FILE_ENV: str(key_file)}
    assert Keyring.from_env(both, default_file=default).sealing_key_id == key_id(KEY_A)
    only_file = {KEY_FILE_ENV: str(key_file)}
    assert Keyring.from_env(only_file, default_file=default).sealing_key_id == key_id(KEY_B)
    assert not default.exists()
    with pytest.raises(SealingError, match=r"no secrets key: set ISPBILL_SECRETS_KEY"):
        Keyring.from_env({})
    with pytest.raises(SealingError, match="does not exist"):
        Keyring.from_env({}, default_file=default)  # not made unless asked
    with pytest.raises(SealingError, match="does not exist"):
        Keyring.from_env({KEY_FILE_ENV: str(tmp_path / "missing")})


def test_the_default_key_file_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    default = tmp_path / "data" / "secrets.key"
    first = Keyring.from_env({}, default_file=default, create_default=True)
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    again = Keyring.from_env({}, default_file=default, create_default=True)
    assert again.sealing_key_id == first.sealing_key_id  # never replaced
    assert not write_new_key_file(default)
    assert Keyring.from_file(default).sealing_key_id == first.sealing_key_id
    assert [p.name for p in default.parent.iterdir()] == ["secrets.key"]  # no temp file left


def test_processes_making_the_default_key_at_once_agree_on_one(tmp_path: Path) -> None:
    default = tmp_path / "secrets.key"
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from ispbill_core.sealing import Keyring
        path = Path(sys.argv[1])
        print(Keyring.from_env({}, default_file=path, create_default=True).sealing_key_id)
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(default)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    ids = {p.communicate(timeout=60)[0].strip() for p in processes}
    assert all(p.returncode == 0 for p in processes)
    assert ids == {Keyring.from_file(default).sealing_key_id}


def test_a_new_key_is_64_random_bytes() -> None:
    one, two = new_key(), new_key()
    assert len(base64.b64decode(one)) == 64 and one != two
    Keyring.from_text(one)
