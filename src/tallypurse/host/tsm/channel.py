"""The off-card end of an SCP03-style secure channel to a security domain."""

from __future__ import annotations

from tallypurse.core import crypto, scp03, tlv
from tallypurse.core.apdu import Command
from tallypurse.core.errors import CardError, CryptoError
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    INSTALL_FOR_INSTALL_AND_SELECTABLE,
    INSTALL_FOR_PERSONALIZATION,
    CardLifeCycle,
    Ins,
)
from tallypurse.core.transport import ApduClient

T_INSTALL_PARAMS = 0xC9
T_INITIAL_KEYS = 0xDA


def lv(*fields: bytes) -> bytes:
    return b"".join(bytes([len(f)]) + f for f in fields)


class SecureChannel:
    """Open with :meth:`open`; then every command is MACed (and encrypted)."""

    def __init__(self, client: ApduClient, keys: scp03.StaticKeys, session: scp03.Session) -> None:
        self.client = client
        self.keys = keys
        self.session = session

    @classmethod
    def open(
        cls,
        client: ApduClient,
        sd_aid: bytes,
        keys: scp03.StaticKeys,
        *,
        level: int = scp03.FULL,
        host_challenge: bytes | None = None,
    ) -> SecureChannel:
        client.select(sd_aid)
        host_challenge = host_challenge or crypto.random_bytes(8)
        resp = client.call(
            Command(CLA_PROPRIETARY, Ins.INITIALIZE_UPDATE, keys.version, 0x00, host_challenge, 0)
        )
        if len(resp) not in (29, 32):
            raise CryptoError("INITIALIZE UPDATE answer has a wrong length")
        key_version = resp[10]
        card_challenge, card_cryptogram = resp[13:21], resp[21:29]
        if key_version != keys.version:
            raise CryptoError(f"card answered with key version {key_version}")
        session = scp03.Session.derive(keys, host_challenge, card_challenge)
        if not crypto.constant_time_equal(session.card_cryptogram(), card_cryptogram):
            raise CryptoError("card cryptogram does not verify: wrong keys or not this card")
        auth = session.wrap(
            Command(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, level, 0x00,
                    session.host_cryptogram())
        )
        client.call(auth)
        session.authenticated = True
        session.level = level
        return cls(client, keys, session)

    def call(self, cmd: Command) -> bytes:
        wrapped = self.session.wrap(cmd)
        resp = self.client.send(wrapped)
        if resp.sw != 0x9000:
            raise CardError(resp.sw)
        return self.session.unwrap_response(resp.data, resp.sw)

    # --- GlobalPlatform commands -----------------------------------------------------------
    def put_key(self, new: scp03.StaticKeys, *, replace: int = 0) -> bytes:
        data = scp03.encode_key_set(self.keys.dek, new)
        out = self.call(Command(CLA_PROPRIETARY, Ins.PUT_KEY, replace, 0x81, data, 0))
        expected = bytes([new.version]) + b"".join(new.kcvs())
        if out != expected:
            raise CryptoError("PUT KEY answer does not carry the expected key check values")
        return out

    def install(
        self,
        *,
        package: bytes,
        module: bytes,
        aid: bytes,
        privileges: int = 0,
        initial_keys: scp03.StaticKeys | None = None,
    ) -> None:
        params = b""
        if initial_keys is not None:
            params = tlv.encode(
                T_INSTALL_PARAMS,
                tlv.encode(T_INITIAL_KEYS, scp03.encode_key_set(self.keys.dek, initial_keys)),
            )
        data = lv(package, module, aid, bytes([privileges]), params, b"")
        self.call(Command(CLA_PROPRIETARY, Ins.INSTALL, INSTALL_FOR_INSTALL_AND_SELECTABLE, 0,
                          data, 0))

    def install_for_personalisation(self, aid: bytes) -> None:
        self.call(Command(CLA_PROPRIETARY, Ins.INSTALL, INSTALL_FOR_PERSONALIZATION, 0,
                          lv(b"", b"", aid, b"", b""), 0))

    def store_data(self, data: bytes, *, block: int = 0, last: bool = False) -> bytes:
        return self.call(Command(CLA_PROPRIETARY, Ins.STORE_DATA, 0x80 if last else 0x00,
                                 block & 0xFF, data, 0))

    def delete(self, aid: bytes, *, related: bool = False) -> None:
        self.call(Command(CLA_PROPRIETARY, Ins.DELETE, 0, 0x80 if related else 0x00,
                          tlv.encode(0x4F, aid), 0))

    def set_card_life(self, state: CardLifeCycle) -> None:
        self.call(Command(CLA_PROPRIETARY, Ins.SET_STATUS, 0x80, int(state)))

    def get_status(self, p1: int) -> list[dict[int, bytes]]:
        out = self.call(Command(CLA_PROPRIETARY, Ins.GET_STATUS, p1, 0x02, tlv.encode(0x4F, b""),
                                0))
        return [tlv.decode_map(item.value) for item in tlv.decode(out)]
