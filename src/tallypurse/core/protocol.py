"""Identifiers of the tallypurse card protocol: AIDs, classes, instructions, tags.

docs/protocol.md is the normative description; this module is its code form.
"""

from __future__ import annotations

from enum import IntEnum

# --- Application identifiers --------------------------------------------------
# The ISD uses the GlobalPlatform default AID. tallypurse's own AIDs use the
# proprietary (unregistered) RID category F0 followed by "TP".
ISD_AID = bytes.fromhex("A000000151000000")
SD_PACKAGE_AID = bytes.fromhex("A0000001515350")  # GP security-domain load file
SD_MODULE_AID = bytes.fromhex("A000000151535041")
PURSE_PACKAGE_AID = bytes.fromhex("F054500100")
PURSE_MODULE_AID = bytes.fromhex("F05450010000")
PURSE_AID = bytes.fromhex("F05450010001")
OPERATOR_SD_AID = bytes.fromhex("F0545053440001")
LOYALTY_PACKAGE_AID = bytes.fromhex("F054500200")
LOYALTY_MODULE_AID = bytes.fromhex("F05450020000")
LOYALTY_AID = bytes.fromhex("F05450020001")
PARTNER_SD_AID = bytes.fromhex("F0545053440002")
# A phone wallet's own security domain: the purse of a phone (host card emulation or
# the phone's secure element) lives there, under keys diversified with this AID.
PHONE_SD_AID = bytes.fromhex("F0545053440003")
# The membership / access pass (a non-payment applet) and its domain.
MEMBERSHIP_SD_AID = bytes.fromhex("F0545053440004")
MEMBERSHIP_PACKAGE_AID = bytes.fromhex("F054500300")
MEMBERSHIP_MODULE_AID = bytes.fromhex("F05450030000")
MEMBERSHIP_AID = bytes.fromhex("F05450030001")

# --- Classes -------------------------------------------------------------------
CLA_ISO = 0x00
CLA_PROPRIETARY = 0x80
CLA_SECURE = 0x84  # GlobalPlatform: proprietary class with secure messaging


class Ins(IntEnum):
    """Instruction bytes. GlobalPlatform ones keep their GP values."""

    SELECT = 0xA4
    GET_DATA = 0xCA
    READ_RECORD = 0xB2
    GET_CHALLENGE = 0x84
    # GlobalPlatform card management
    INITIALIZE_UPDATE = 0x50
    EXTERNAL_AUTHENTICATE = 0x82
    INSTALL = 0xE6
    DELETE = 0xE4
    PUT_KEY = 0xD8
    GET_STATUS = 0xF2
    SET_STATUS = 0xF0
    STORE_DATA = 0xE2
    # Purse applet (CLA 80)
    INITIALIZE_PURCHASE = 0x40
    DEBIT = 0x42
    GET_TRANSACTION_PROOF = 0x44
    CANCEL_LAST_DEBIT = 0x46
    ONLINE_AUTHORISE = 0x48
    INITIALIZE_LOAD = 0x4A
    CREDIT = 0x4C
    WRITE_BACK = 0x4E
    GENERATE_KEY = 0x52


# --- GlobalPlatform INSTALL P1 -------------------------------------------------
INSTALL_FOR_PERSONALIZATION = 0x20
INSTALL_FOR_INSTALL_AND_SELECTABLE = 0x0C

# --- GET STATUS P1 ----------------------------------------------------------------
STATUS_ISD = 0x80
STATUS_APPS_AND_SDS = 0x40
STATUS_LOAD_FILES = 0x20

# --- Privileges (GlobalPlatform byte 1) -----------------------------------------
PRIV_SECURITY_DOMAIN = 0x80
PRIV_CARD_LOCK = 0x10
PRIV_CARD_TERMINATE = 0x08

# --- Purse GET DATA tags (P1-P2) -------------------------------------------------
DATA_CARD = 0x0101
DATA_BALANCE = 0x0102
DATA_CERTIFICATE = 0x0103
DATA_CREDIT_RECORD = 0x0104
DATA_DEBTS = 0x0105

# --- Purse TLV tags ----------------------------------------------------------------
T_CARD_ID = 0xC1
T_ATC = 0xC2
T_LOAD_COUNTER = 0xC3
T_BALANCE = 0xC4
T_CURRENCY = 0xC5
T_CHALLENGE = 0xC6
T_FLAGS = 0xC7
T_CREDIT_RECORD = 0xC8
T_DEBTS = 0xC9
T_CAP = 0xCA
T_OFFLINE_LIMIT = 0xCB
T_EXPIRY = 0xCC
T_ONLINE_COUNTER = 0xCD
T_LOG_SIZE = 0xCE
T_CANCEL_WINDOW = 0xCF
T_PUBLIC_KEY = 0xD0
T_CERTIFICATE = 0xD1
T_ISSUER_ROOT = 0xD2
T_APP_KEY = 0xD3
T_APP_KEY_VERSION = 0xD4
T_ROOT_KEY_REF = 0xD5
T_WRITEBACK_SEQ = 0xD6
T_DEBT_SLOTS = 0xD7
T_FCI = 0x6F
T_FCI_AID = 0x84
T_FCI_PROPRIETARY = 0xA5

# --- Membership pass (CLA 80; docs/phone.md) ----------------------------------------
INS_MEMBER_READ = 0x30  # READ PASS
INS_MEMBER_CHECK = 0x32  # CHECK ENTITLEMENT: time (4) || entitlement bit (1)
INS_MEMBER_CHALLENGE = 0x34  # GET POINTS CHALLENGE
INS_MEMBER_POINTS = 0x36  # UPDATE POINTS, P1 = MEMBER_ADD or MEMBER_REDEEM
MEMBER_ADD = 0x01
MEMBER_REDEEM = 0x02
# Membership TLV tags (READ PASS answer and STORE DATA)
T_MEMBER_HOLDER = 0x81
T_MEMBER_NOT_BEFORE = 0x82
T_MEMBER_NOT_AFTER = 0x83
T_MEMBER_POINTS = 0x84
T_MEMBER_ENTITLEMENTS = 0x85
T_MEMBER_COUNTER = 0x86
T_MEMBER_KEY = 0x87  # STORE DATA: version (1) || pass key (16); READ PASS: version only
# CHECK ENTITLEMENT decisions (the answer's one byte)
GATE_GRANTED = 0x00
GATE_NOT_YET_VALID = 0x01
GATE_EXPIRED = 0x02
GATE_NOT_ENTITLED = 0x03
# Message types (domain separator "TP" 01 type) of the pass key's MACs
MSG_MEMBER_POINTS = 0x30
MSG_MEMBER_RECEIPT = 0x31

# Status flag bits (T_FLAGS)
FLAG_BLOCKED = 0x01
FLAG_PERSONALISED = 0x02
FLAG_HAS_CREDIT = 0x04
FLAG_FAILED_DEBT = 0x08

# Card verification results (CardEvent.cvr): the purse's own evaluation of each
# balance-changing event, signed in the TAC. docs/protocol.md section 11.11.
CVR_SPLIT = 0x0001  # this debit took credit (split > 0)
CVR_DEBT_OUTSTANDING = 0x0002  # after the event a debt slot is PENDING or FAILED
CVR_DEBT_NEAR_LIMIT = 0x0004  # outstanding debt >= 80 % of the record's maximum, or no free slot
CVR_FAILED_DEBT = 0x0008  # after the event a debt slot is FAILED (collection failed)
CVR_OFFLINE_COUNT = 0x0010  # the 20th or later debit since the last host contact
CVR_OFFLINE_AMOUNT = 0x0020  # debits since the last host contact total more than the cap
CVR_RECORD_AGED = 0x0040  # credit record issued over 28 days before the event, or expired
CVR_LOW_BALANCE = 0x0080  # a debit leaves less than its own price: it could not be paid again
CVR_DEFINED = 0x00FF  # every bit defined; the others are sent as 0
CVR_OFFLINE_COUNT_LIMIT = 20  # debits since the last host contact that set CVR_OFFLINE_COUNT
CVR_RECORD_AGE_LIMIT = 28 * 86_400  # seconds since a credit record's issue that set RECORD_AGED
CVR_NEAR_LIMIT_PERCENT = 80  # share of max_outstanding that sets CVR_DEBT_NEAR_LIMIT


class CardLifeCycle(IntEnum):
    """GlobalPlatform card life cycle states (coding per GP Card Spec 11.1.1)."""

    OP_READY = 0x01
    INITIALIZED = 0x07
    SECURED = 0x0F
    CARD_LOCKED = 0x7F
    TERMINATED = 0xFF


class AppLifeCycle(IntEnum):
    INSTALLED = 0x03
    SELECTABLE = 0x07
    PERSONALIZED = 0x0F  # security domains; applets use it for "personalised" too
    LOCKED = 0x83


class TxType(IntEnum):
    """Transaction types; each is one bit in a credit record's allowed-types mask."""

    GENERAL = 0
    CANTEEN = 1
    TRANSIT = 2
    RETAIL = 3
    VENDING = 4
    PARKING = 5
    TICKETING = 6

    @property
    def bit(self) -> int:
        return 1 << int(self)

    @classmethod
    def parse(cls, name: str) -> TxType:
        try:
            return cls[name.upper()]
        except KeyError:
            names = ", ".join(t.name.lower() for t in cls)
            from tallypurse.core.errors import BadInput

            raise BadInput(f"unknown transaction type {name!r} (one of: {names})") from None


class EventKind(IntEnum):
    """Kinds of balance-changing events a card signs (the TAC's first byte)."""

    DEBIT = 1
    CANCEL = 2
    LOAD = 3


class DebtState(IntEnum):
    FREE = 0
    PENDING = 1
    FAILED = 2


class WriteBackAction(IntEnum):
    SETTLE_DEBT = 1
    FAIL_DEBT = 2
    CREDIT_RECORD = 3
    BLOCK = 4
    UNBLOCK = 5


class CertRole(IntEnum):
    ROOT = 0
    CARD = 1
    TERMINAL = 2
    HOST_LIST = 3
    HOST_LOAD = 4
    HOST_API = 5
