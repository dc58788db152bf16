"""The card OS: APDU dispatch, applet registry, life cycles, firewall, transactions.

Executable load files are ROM-resident (the applet classes known to this card
OS, see ``ROM``); GlobalPlatform INSTALL [for install] instantiates them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import DecodeError
from tallypurse.core.protocol import (
    CLA_ISO,
    ISD_AID,
    PRIV_SECURITY_DOMAIN,
    AppLifeCycle,
    CardLifeCycle,
    Ins,
)
from tallypurse.core.sw import ISOException

from .applet import Applet, AppletContext
from .storage import Eeprom, Store

_REG = "os:app:"
_LIFE = "os:life"
_SERIAL = "os:serial"


@dataclass
class AppRecord:
    aid: str
    package: str
    module: str
    sd: str  # associated security domain AID (the ISD's is its own)
    life: int
    privileges: int

    @property
    def is_sd(self) -> bool:
        return bool(self.privileges & PRIV_SECURITY_DOMAIN)


Rom = dict[bytes, dict[bytes, type[Applet]]]


class CardOS:
    """One powered-up session of the card: RAM state is lost at power-off."""

    def __init__(self, eeprom: Eeprom, rom: Rom, random: Callable[[int], bytes]) -> None:
        self.eeprom = eeprom
        self.rom = rom
        self.random = random
        self.selected: bytes | None = None
        self._instances: dict[bytes, Applet] = {}
        self.manager = CardManager(self)

    # --- persistent registry --------------------------------------------------------------
    @property
    def serial(self) -> bytes:
        return self.eeprom.get(_SERIAL) or b""

    @property
    def life(self) -> CardLifeCycle:
        raw = self.eeprom.get(_LIFE)
        return CardLifeCycle(raw[0]) if raw else CardLifeCycle.OP_READY

    def set_life(self, state: CardLifeCycle) -> None:
        self.eeprom.put(_LIFE, bytes([state]))

    def record(self, aid: bytes) -> AppRecord | None:
        raw = self.eeprom.get(_REG + aid.hex())
        return AppRecord(**json.loads(raw)) if raw else None

    def records(self) -> list[AppRecord]:
        out = []
        for key in sorted(self.eeprom.keys(_REG)):
            raw = self.eeprom.get(key)
            if raw:
                out.append(AppRecord(**json.loads(raw)))
        return out

    def put_record(self, rec: AppRecord) -> None:
        self.eeprom.put(_REG + rec.aid, json.dumps(asdict(rec), sort_keys=True).encode())

    def instance(self, aid: bytes) -> Applet:
        inst = self._instances.get(aid)
        if inst is None:
            rec = self.record(aid)
            if rec is None:
                raise ISOException(SW.FILE_NOT_FOUND)
            cls = self.rom[bytes.fromhex(rec.package)][bytes.fromhex(rec.module)]
            inst = cls(self._context(aid, rec))
            self._instances[aid] = inst
        return inst

    def _context(self, aid: bytes, rec: AppRecord) -> AppletContext:
        return AppletContext(
            aid=aid,
            store=Store(self.eeprom, aid),
            random=self.random,
            serial=self.serial,
            lookup=self._shareable,
            manager=self.manager if rec.is_sd else None,
        )

    def _shareable(self, client: bytes, server: bytes, name: str) -> object | None:
        rec = self.record(server)
        if rec is None or rec.life == AppLifeCycle.LOCKED:
            return None
        return self.instance(server).shareable(client, name)

    def forget(self, aid: bytes) -> None:
        self._instances.pop(aid, None)
        if self.selected == aid:
            self.selected = None

    # --- dispatch -----------------------------------------------------------------------------
    def transmit(self, raw: bytes) -> bytes:
        try:
            cmd = Command.parse(raw)
        except DecodeError:
            return Response.status(SW.WRONG_LENGTH).to_bytes()
        self.eeprom.begin()
        try:
            data = self._dispatch(cmd)
        except ISOException as exc:
            self.eeprom.abort()
            return Response.status(exc.sw).to_bytes()
        except DecodeError:
            self.eeprom.abort()
            return Response.status(SW.WRONG_DATA).to_bytes()
        except BaseException:
            self.eeprom.abort()
            raise
        self.eeprom.commit()
        return Response(data, SW.OK).to_bytes()

    def _dispatch(self, cmd: Command) -> bytes:
        if cmd.cla & 0x03:
            raise ISOException(SW.CLA_NOT_SUPPORTED, "logical channels are not supported")
        if cmd.cla == CLA_ISO and cmd.ins == Ins.SELECT and cmd.p1 == 0x04:
            return self._select(cmd)
        if cmd.cla == 0xFF:
            raise ISOException(SW.CLA_NOT_SUPPORTED)
        if self.selected is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no applet selected")
        if self.life == CardLifeCycle.TERMINATED and not (
            self.selected == ISD_AID and cmd.ins == Ins.GET_DATA
        ):
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "card terminated")
        return self.instance(self.selected).process(cmd)

    def _select(self, cmd: Command) -> bytes:
        if cmd.p2 not in (0x00, 0x0C):
            raise ISOException(SW.INCORRECT_P1P2)
        if not 5 <= len(cmd.data) <= 16:
            raise ISOException(SW.WRONG_LENGTH if not cmd.data else SW.FILE_NOT_FOUND)
        target: AppRecord | None = None
        for rec in self.records():
            if bytes.fromhex(rec.aid).startswith(cmd.data):
                target = rec
                break
        if target is None:
            raise ISOException(SW.FILE_NOT_FOUND)
        aid = bytes.fromhex(target.aid)
        life = self.life
        if life in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED) and aid != ISD_AID:
            raise ISOException(SW.FILE_NOT_FOUND, "card locked")
        if target.life in (AppLifeCycle.INSTALLED, AppLifeCycle.LOCKED) and not target.is_sd:
            raise ISOException(SW.FILE_NOT_FOUND, "applet not selectable")
        if self.selected is not None and self.selected != aid:
            self.instance(self.selected).deselect()
        self.selected = None
        fci = self.instance(aid).select()
        self.selected = aid
        return b"" if cmd.p2 == 0x0C else fci

    def reset(self) -> None:
        if self.selected is not None:
            self.instance(self.selected).deselect()
        self.selected = None
        self._instances.clear()


class CardManager:
    """The OS services that only security domains receive. Every call names the
    requesting domain and is checked against GlobalPlatform's rules."""

    def __init__(self, os_: CardOS) -> None:
        self._os = os_

    @property
    def serial(self) -> bytes:
        return self._os.serial

    @property
    def card_life(self) -> CardLifeCycle:
        return self._os.life

    def is_isd(self, sd: bytes) -> bool:
        return sd == ISD_AID

    def install(
        self,
        sd: bytes,
        *,
        package: bytes,
        module: bytes,
        aid: bytes,
        privileges: int,
        params: bytes,
    ) -> None:
        if self._os.life == CardLifeCycle.TERMINATED:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED)
        if privileges & PRIV_SECURITY_DOMAIN and not self.is_isd(sd):
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "only the ISD creates security domains")
        if privileges & ~PRIV_SECURITY_DOMAIN:
            raise ISOException(SW.WRONG_DATA, "unsupported privileges")
        cls = self._os.rom.get(package, {}).get(module)
        if cls is None:
            raise ISOException(SW.REF_DATA_NOT_FOUND, "no such load file or module")
        if not 5 <= len(aid) <= 16:
            raise ISOException(SW.WRONG_DATA, "AID must be 5-16 bytes")
        if self._os.record(aid) is not None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "AID already installed")
        rec = AppRecord(
            aid=aid.hex(),
            package=package.hex(),
            module=module.hex(),
            sd=sd.hex(),
            life=int(AppLifeCycle.SELECTABLE),
            privileges=privileges,
        )
        self._os.put_record(rec)
        self._os.forget(aid)
        self._os.instance(aid).install(params)

    def delete(self, sd: bytes, aid: bytes, *, related: bool) -> list[bytes]:
        rec = self._os.record(aid)
        if rec is None:
            raise ISOException(SW.REF_DATA_NOT_FOUND)
        if aid == ISD_AID:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "the ISD cannot be deleted")
        if rec.is_sd:
            if not self.is_isd(sd):
                raise ISOException(SW.SECURITY_NOT_SATISFIED, "only the ISD deletes domains")
        elif bytes.fromhex(rec.sd) != sd:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "not this domain's applet")
        children = [r for r in self._os.records() if r.sd == rec.aid and r.aid != rec.aid]
        if children and not related:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "domain still has applets")
        gone = []
        for r in [*children, rec]:
            a = bytes.fromhex(r.aid)
            self._os.instance(a).uninstall()
            store = Store(self._os.eeprom, a)
            for name in store.names():
                store.delete(name)
            self._os.eeprom.delete(_REG + r.aid)
            self._os.forget(a)
            gone.append(a)
        return gone

    def owns(self, sd: bytes, aid: bytes) -> bool:
        rec = self._os.record(aid)
        return rec is not None and bytes.fromhex(rec.sd) == sd and aid != sd

    def applet_for_personalisation(self, sd: bytes, aid: bytes) -> Applet:
        if not self.owns(sd, aid):
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "not this domain's applet")
        return self._os.instance(aid)

    def set_card_life(self, sd: bytes, state: CardLifeCycle) -> None:
        if not self.is_isd(sd):
            raise ISOException(SW.SECURITY_NOT_SATISFIED)
        cur = self._os.life
        allowed = {
            CardLifeCycle.OP_READY: {CardLifeCycle.INITIALIZED, CardLifeCycle.SECURED},
            CardLifeCycle.INITIALIZED: {CardLifeCycle.SECURED},
            CardLifeCycle.SECURED: {CardLifeCycle.CARD_LOCKED},
            CardLifeCycle.CARD_LOCKED: {CardLifeCycle.SECURED},
            CardLifeCycle.TERMINATED: set(),
        }[cur]
        if state != CardLifeCycle.TERMINATED and state not in allowed:
            raise ISOException(
                SW.CONDITIONS_NOT_SATISFIED, f"no transition {cur.name} -> {state.name}"
            )
        if cur == CardLifeCycle.TERMINATED:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "card terminated")
        self._os.set_life(state)

    def set_app_life(self, sd: bytes, aid: bytes, state: AppLifeCycle) -> None:
        rec = self._os.record(aid)
        if rec is None:
            raise ISOException(SW.REF_DATA_NOT_FOUND)
        if bytes.fromhex(rec.sd) != sd and not self.is_isd(sd):
            raise ISOException(SW.SECURITY_NOT_SATISFIED)
        if aid == ISD_AID or state not in (AppLifeCycle.LOCKED, AppLifeCycle.SELECTABLE):
            raise ISOException(SW.WRONG_DATA)
        rec.life = int(state)
        self._os.put_record(rec)
        if state == AppLifeCycle.LOCKED:
            self._os.forget(aid)

    def status(self, sd: bytes) -> list[AppRecord]:
        recs = self._os.records()
        if self.is_isd(sd):
            return recs
        return [r for r in recs if r.sd == sd.hex() or r.aid == sd.hex()]
