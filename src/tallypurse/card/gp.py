"""GlobalPlatform-style security domains: the ISD (card manager) and supplementary domains.

Each domain holds static AES key sets (ENC/MAC/DEK) by key version and
opens SCP03-style secure channels (see :mod:`tallypurse.core.scp03`). Card
content management (INSTALL, DELETE, PUT KEY, SET STATUS, STORE DATA for
personalisation) is accepted only inside an authenticated channel with at
least C-MAC; commands that carry key material need C-DECRYPTION too.
"""

from __future__ import annotations

from tallypurse.core import crypto, scp03, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.errors import CryptoError, DecodeError
from tallypurse.core.protocol import (
    CLA_ISO,
    CLA_PROPRIETARY,
    CLA_SECURE,
    INSTALL_FOR_INSTALL_AND_SELECTABLE,
    INSTALL_FOR_PERSONALIZATION,
    PRIV_SECURITY_DOMAIN,
    STATUS_APPS_AND_SDS,
    STATUS_ISD,
    STATUS_LOAD_FILES,
    AppLifeCycle,
    CardLifeCycle,
    Ins,
)
from tallypurse.core.sw import ISOException

from .applet import Applet

# Install-parameter tags (inside INSTALL's install-parameters field)
T_INSTALL_PARAMS = 0xC9
T_INITIAL_KEYS = 0xDA  # initial key set of a new security domain, as PUT KEY data
T_KEY_INFO = 0xE0


_MAX_KEY_SETS = 4

# Every instruction a security domain knows; any other is 6D00 whatever the class.
_SD_INS = frozenset(
    {
        Ins.INITIALIZE_UPDATE,
        Ins.EXTERNAL_AUTHENTICATE,
        Ins.INSTALL,
        Ins.DELETE,
        Ins.PUT_KEY,
        Ins.GET_STATUS,
        Ins.SET_STATUS,
        Ins.STORE_DATA,
        Ins.GET_DATA,
    }
)


def _key_name(version: int) -> str:
    return f"keys:{version:02x}"


def encode_keys(keys: scp03.StaticKeys) -> bytes:
    return bytes([keys.version]) + keys.enc + keys.mac + keys.dek


def decode_keys(raw: bytes) -> scp03.StaticKeys:
    return scp03.StaticKeys(raw[0], raw[1:17], raw[17:33], raw[33:49])


def parse_lv_fields(data: bytes, count: int) -> list[bytes]:
    """GlobalPlatform INSTALL data: ``count`` length-value fields, nothing after."""
    out = []
    pos = 0
    for _ in range(count):
        if pos >= len(data):
            raise DecodeError("truncated INSTALL data", pos)
        n = data[pos]
        pos += 1
        if pos + n > len(data):
            raise DecodeError("INSTALL field runs past the end", pos)
        out.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise DecodeError("trailing bytes after INSTALL data", pos)
    return out


def lv(*fields: bytes) -> bytes:
    return b"".join(bytes([len(f)]) + f for f in fields)


class SecurityDomain(Applet):
    """A security domain. The ISD is the instance whose AID is the ISD AID."""

    def __init__(self, ctx):  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.session: scp03.Session | None = None
        self._perso_target: bytes | None = None

    # --- persistent keys ---------------------------------------------------------------
    def key_sets(self) -> dict[int, scp03.StaticKeys]:
        out = {}
        for name in self.ctx.store.names():
            if name.startswith("keys:"):
                raw = self.ctx.store.get(name)
                if raw:
                    ks = decode_keys(raw)
                    out[ks.version] = ks
        return out

    def _put_keys(self, keys: scp03.StaticKeys) -> None:
        self.ctx.store.put(_key_name(keys.version), encode_keys(keys))

    def install(self, params: bytes) -> None:
        """Install parameters: C9 { DA initial key set in clear } (the installing
        domain has already unwrapped it)."""
        try:
            fields = tlv.decode_map(params, required=(T_INITIAL_KEYS,))
        except DecodeError:
            raise ISOException(SW.WRONG_DATA, "a security domain needs its initial keys") from None
        raw = fields[T_INITIAL_KEYS]
        if len(raw) != 49:
            raise ISOException(SW.WRONG_DATA, "initial key set must be 49 bytes")
        self._put_keys(decode_keys(raw))

    def manufacture(self, keys: scp03.StaticKeys) -> None:
        self._put_keys(keys)

    @property
    def manager(self):  # type: ignore[no-untyped-def]
        m = self.ctx.manager
        if m is None:  # pragma: no cover - the OS always gives domains a manager
            raise ISOException(SW.UNKNOWN)
        return m

    @property
    def is_isd(self) -> bool:
        return bool(self.manager.is_isd(self.ctx.aid))

    def select(self) -> bytes:
        self.session = None
        self._perso_target = None
        return tlv.encode(0x6F, tlv.encode(0x84, self.ctx.aid) + tlv.encode(0xA5, b""))

    def deselect(self) -> None:
        self.session = None
        self._perso_target = None

    # --- dispatch -------------------------------------------------------------------------------
    def process(self, cmd: Command) -> bytes:
        ins = cmd.ins
        if cmd.cla not in (CLA_ISO, CLA_PROPRIETARY, CLA_SECURE):
            raise ISOException(SW.CLA_NOT_SUPPORTED)
        if ins not in _SD_INS and not (cmd.secure_messaging and self.session is not None):
            # (inside a channel the C-MAC is checked first so that chaining goes on)
            raise ISOException(SW.INS_NOT_SUPPORTED)
        if cmd.cla == CLA_PROPRIETARY and ins == Ins.INITIALIZE_UPDATE:
            return self._initialize_update(cmd)
        if ins == Ins.GET_DATA and not cmd.secure_messaging:
            return self._get_data(cmd)
        if cmd.cla & 0xF8 != CLA_PROPRIETARY:
            raise ISOException(SW.CLA_NOT_SUPPORTED)
        if not cmd.secure_messaging:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "secure channel required")
        session = self.session
        if session is None:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "no secure channel")
        if ins == Ins.EXTERNAL_AUTHENTICATE:
            return self._external_authenticate(cmd, session)
        if not session.authenticated:
            self.session = None
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "channel not authenticated")
        try:
            data = session.unwrap(cmd)
        except CryptoError:
            self.session = None
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "C-MAC or decryption failed") from None
        plain = Command(cmd.cla & ~0x04, ins, cmd.p1, cmd.p2, data, cmd.le)
        # An error is answered in clear; MAC chaining goes on from this command.
        return session.wrap_response(self._managed(plain, session), SW.OK)

    def _managed(self, cmd: Command, session: scp03.Session) -> bytes:
        ins = cmd.ins
        if ins == Ins.INSTALL:
            return self._install(cmd, session)
        if ins == Ins.DELETE:
            return self._delete(cmd)
        if ins == Ins.PUT_KEY:
            return self._put_key(cmd, session)
        if ins == Ins.GET_STATUS:
            return self._get_status(cmd)
        if ins == Ins.SET_STATUS:
            return self._set_status(cmd)
        if ins == Ins.STORE_DATA:
            return self._store_data(cmd, session)
        if ins == Ins.GET_DATA:
            return self._get_data(cmd)
        raise ISOException(SW.INS_NOT_SUPPORTED)

    # --- secure channel ---------------------------------------------------------------------
    def _initialize_update(self, cmd: Command) -> bytes:
        self.session = None
        self._perso_target = None
        if cmd.p2 != 0x00:
            raise ISOException(SW.INCORRECT_P1P2)
        if len(cmd.data) != 8:
            raise ISOException(SW.WRONG_LENGTH)
        sets = self.key_sets()
        if not sets:
            raise ISOException(SW.REF_DATA_NOT_FOUND, "no keys")
        version = cmd.p1 or max(sets)
        keys = sets.get(version)
        if keys is None:
            raise ISOException(SW.REF_DATA_NOT_FOUND, "no such key version")
        card_challenge = self.ctx.random(8)
        session = scp03.Session.derive(keys, cmd.data, card_challenge)
        self.session = session
        diversification = (self.ctx.serial + b"\x00" * 10)[:10]
        key_info = bytes([keys.version, scp03.SCP_ID, scp03.SCP_I_PARAM])
        return diversification + key_info + card_challenge + session.card_cryptogram()

    def _external_authenticate(self, cmd: Command, session: scp03.Session) -> bytes:
        self.session = None
        if session.authenticated:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "already authenticated")
        if cmd.p2 != 0x00 or cmd.p1 not in (
            scp03.C_MAC,
            scp03.C_MAC | scp03.C_DECRYPTION,
            scp03.C_MAC | scp03.R_MAC,
            scp03.FULL,
        ):
            raise ISOException(SW.INCORRECT_P1P2)
        if len(cmd.data) != 16:
            raise ISOException(SW.WRONG_LENGTH)
        try:
            host_cryptogram = session.unwrap(cmd)
        except CryptoError:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "bad C-MAC") from None
        if not crypto.constant_time_equal(host_cryptogram, session.host_cryptogram()):
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "host cryptogram does not verify")
        session.authenticated = True
        session.level = cmd.p1
        self.session = session
        return b""

    def _require_encryption(self, session: scp03.Session) -> None:
        if not session.level & scp03.C_DECRYPTION:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "key material needs C-DECRYPTION")

    # --- content management -------------------------------------------------------------------
    def _install(self, cmd: Command, session: scp03.Session) -> bytes:
        if cmd.p1 == INSTALL_FOR_PERSONALIZATION:
            f = parse_lv_fields(cmd.data, 5)
            aid = f[2]
            self.manager.applet_for_personalisation(self.ctx.aid, aid)
            self._perso_target = aid
            return b"\x00"
        if cmd.p1 != INSTALL_FOR_INSTALL_AND_SELECTABLE or cmd.p2 != 0x00:
            raise ISOException(SW.INCORRECT_P1P2)
        package, module, aid, privileges, params, token = parse_lv_fields(cmd.data, 6)
        if token:
            raise ISOException(SW.WRONG_DATA, "tokens are not supported")
        if len(privileges) not in (1, 3):
            raise ISOException(SW.WRONG_DATA, "privileges must be 1 or 3 bytes")
        priv = privileges[0]
        inner = tlv.decode_one(params, T_INSTALL_PARAMS) if params else b""
        if priv & PRIV_SECURITY_DOMAIN:
            self._require_encryption(session)
            fields = tlv.decode_map(inner, required=(T_INITIAL_KEYS,))
            dek = self._current_keys(session).dek
            try:
                keys = scp03.decode_key_set(dek, fields[T_INITIAL_KEYS])
            except CryptoError:
                raise ISOException(SW.SECURITY_NOT_SATISFIED, "initial keys do not unwrap") \
                    from None
            inner = tlv.encode(T_INITIAL_KEYS, encode_keys(keys))
        self.manager.install(
            self.ctx.aid,
            package=package,
            module=module,
            aid=aid,
            privileges=priv,
            params=inner,
        )
        return b"\x00"

    def _current_keys(self, session: scp03.Session) -> scp03.StaticKeys:
        """The key set the channel was opened with."""
        keys = self.key_sets().get(session.key_version)
        if keys is None:
            raise ISOException(SW.REF_DATA_NOT_FOUND, "channel key set was replaced")
        return keys

    def _delete(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 not in (0x00, 0x80):
            raise ISOException(SW.INCORRECT_P1P2)
        aid = tlv.decode_one(cmd.data, 0x4F)
        gone = self.manager.delete(self.ctx.aid, aid, related=cmd.p2 == 0x80)
        if self._perso_target in gone:
            self._perso_target = None
        return b"\x00"

    def _put_key(self, cmd: Command, session: scp03.Session) -> bytes:
        self._require_encryption(session)
        if cmd.p2 != 0x81:
            raise ISOException(SW.INCORRECT_P1P2, "only whole AES key sets (P2=81)")
        sets = self.key_sets()
        current = self._current_keys(session)
        try:
            new = scp03.decode_key_set(current.dek, cmd.data)
        except CryptoError:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "key check value mismatch") from None
        old_version = cmd.p1
        if old_version:
            if old_version not in sets:
                raise ISOException(SW.REF_DATA_NOT_FOUND, "no key set to replace")
            if new.version != old_version and new.version in sets:
                raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "key version exists")
            self.ctx.store.delete(_key_name(old_version))
        else:
            if new.version in sets:
                raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "key version exists")
            if len(sets) >= _MAX_KEY_SETS:
                raise ISOException(SW.NOT_ENOUGH_MEMORY, "too many key sets")
        self._put_keys(new)
        return bytes([new.version]) + b"".join(new.kcvs())

    def _get_status(self, cmd: Command) -> bytes:
        if cmd.p2 not in (0x00, 0x02) or cmd.p1 not in (STATUS_ISD, STATUS_APPS_AND_SDS,
                                                        STATUS_LOAD_FILES):
            raise ISOException(SW.INCORRECT_P1P2)
        out = bytearray()
        if cmd.p1 == STATUS_LOAD_FILES:
            raise ISOException(SW.REF_DATA_NOT_FOUND, "load files are ROM-resident")
        for rec in self.manager.status(self.ctx.aid):
            aid = bytes.fromhex(rec.aid)
            is_isd = self.manager.is_isd(aid)
            if (cmd.p1 == STATUS_ISD) != is_isd:
                continue
            life = int(self.manager.card_life) if is_isd else rec.life
            out += tlv.encode(
                0xE3,
                tlv.encode_many(
                    [
                        (0x4F, aid),
                        (0x9F70, bytes([life])),
                        (0xC5, bytes([rec.privileges, 0, 0])),
                        (0xC4, bytes.fromhex(rec.package)),
                        (0xCC, bytes.fromhex(rec.sd)),
                    ]
                ),
            )
        if not out:
            raise ISOException(SW.REF_DATA_NOT_FOUND)
        return bytes(out)

    def _set_status(self, cmd: Command) -> bytes:
        if cmd.p1 == 0x80:
            if cmd.data:
                raise ISOException(SW.WRONG_LENGTH)
            try:
                state = CardLifeCycle(cmd.p2)
            except ValueError:
                raise ISOException(SW.INCORRECT_P1P2) from None
            self.manager.set_card_life(self.ctx.aid, state)
            return b""
        if cmd.p1 == 0x40:
            try:
                app_state = AppLifeCycle(cmd.p2)
            except ValueError:
                raise ISOException(SW.INCORRECT_P1P2) from None
            self.manager.set_app_life(self.ctx.aid, cmd.data, app_state)
            return b""
        raise ISOException(SW.INCORRECT_P1P2)

    def _store_data(self, cmd: Command, session: scp03.Session) -> bytes:
        target = self._perso_target
        if target is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no INSTALL [for personalization]")
        self._require_encryption(session)
        applet = self.manager.applet_for_personalisation(self.ctx.aid, target)
        return bytes(applet.personalize(cmd.data, last=bool(cmd.p1 & 0x80)))

    def _get_data(self, cmd: Command) -> bytes:
        tag = (cmd.p1 << 8) | cmd.p2
        if tag == 0x0045:  # card image number: the card serial
            return tlv.encode(0x45, self.ctx.serial)
        if tag == 0x00E0:  # key information template
            items = b"".join(
                tlv.encode(0xC0, bytes([1, ks.version, 0x88, 16]))
                for ks in sorted(self.key_sets().values(), key=lambda k: k.version)
            )
            return tlv.encode(0xE0, items)
        if tag == 0x9F7F:
            return tlv.encode(0x9F7F, self.ctx.serial + bytes([int(self.manager.card_life)]))
        raise ISOException(SW.REF_DATA_NOT_FOUND)
