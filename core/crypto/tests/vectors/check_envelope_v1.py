#!/usr/bin/env python3
# Opens every vector in envelope-v1.json with an independent implementation
# (pyca/cryptography with ML-KEM support, tested with 48.0; OpenSSL ML-KEM, X25519, HKDF, ChaCha20-Poly1305),
# following only the format described in qpq-crypto's docs. Run: python3 check_envelope_v1.py
import json, hashlib, os
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

def hkdf(ikm, info, n):
    return HKDF(hashes.SHA256(), n, b"", info).derive(ikm)

d = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "envelope-v1.json")))
for c in d["cases"]:
    aad = bytes.fromhex(c["aad"]); pt = bytes.fromhex(c["plaintext"]); env = bytes.fromhex(c["envelope"])
    n = int.from_bytes(env[2:4], "big"); assert env[0] == 1 and env[1] == 1
    hdr = 4 + 1176 * n
    for seed_hex, pk_hex, fp_hex in zip(c["recipient_seeds"], c["recipient_public_keys"], c["recipient_fingerprints"]):
        okm = hkdf(bytes.fromhex(seed_hex), b"qpq hybrid secret key v1", 96)
        xsk = X25519PrivateKey.from_private_bytes(okm[:32])
        msk = mlkem.MLKEM768PrivateKey.from_seed_bytes(okm[32:96])
        pk_x = xsk.public_key().public_bytes_raw(); pk_m = msk.public_key().public_bytes_raw()
        assert (pk_x + pk_m).hex() == pk_hex
        fp = hashlib.sha256(pk_x + pk_m).digest()[:8]; assert fp.hex() == fp_hex
        for i in range(n):
            e = env[4 + 1176 * i: 4 + 1176 * (i + 1)]
            if e[:8] != fp: continue
            eph = e[8:40]; ct = e[40:1128]; wrapped = e[1128:]
            ss_x = xsk.exchange(X25519PublicKey.from_public_bytes(eph))
            ss_m = msk.decapsulate(ct)
            wk = hkdf(ss_m + ss_x, b"qpq hybrid envelope v1 wrap" + ct + eph + pk_x + pk_m, 32)
            k = ChaCha20Poly1305(wk).decrypt(b"\0" * 12, wrapped, env[:4] + e[:1128])
            out = ChaCha20Poly1305(k).decrypt(b"\0" * 12, env[hdr:], env[:hdr] + aad)
            assert out == pt
            break
        else:
            raise SystemExit("no entry")
    print("ok:", c["name"])
