#!/usr/bin/env python3
"""Writes hostile CAR files, one defect each; EXPECTED maps each file to the error it must give.
Re-run to regenerate: python3 generate.py"""
import hashlib

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def cid(data, codec=0x71, hash_code=0x12):
    digest = hashlib.sha256(data).digest()
    return bytes([1, codec, hash_code, 32]) + digest

def header(root_cid, version=1, extra=b''):
    # {"roots": [root], "version": version} in canonical order
    return (b'\xa2' + b'\x65roots' + b'\x81' + b'\xd8\x2a\x58\x25\x00' + root_cid
            + b'\x67version' + bytes([version]) + extra)

def car(hdr, sections):
    out = varint(len(hdr)) + hdr
    for c, data in sections:
        out += varint(len(c) + len(data)) + c + data
    return out

block = b'\x62hi'  # CBOR text "hi"
good = cid(block)
cases = {}
cases['carv2-pragma.car'] = (bytes.fromhex('0aa16776657273696f6e02') + b'\x00' * 40, 'UnsupportedVersion(2)')
cases['header-version-3.car'] = (car(header(good, 3), [(good, block)]), 'UnsupportedVersion(3)')
cases['no-roots.car'] = (car(b'\xa2\x65roots\x80\x67version\x01', []), 'NoRoots')
cases['header-not-map.car'] = (car(b'\x81\x01', []), 'HeaderShape')
cases['header-keys-out-of-order.car'] = (car(b'\xa2\x67version\x01\x65roots\x81\xd8\x2a\x58\x25\x00' + good, []), 'HeaderCbor(KeyOrder)')
cases['header-float-version.car'] = (car(b'\xa2\x65roots\x81\xd8\x2a\x58\x25\x00' + good + b'\x67version\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00', []), 'HeaderCbor(Float)')
cases['header-length-huge.car'] = (varint(1 << 40) + b'\xa0', 'HeaderTooLarge')
cases['header-length-nonminimal.car'] = (b'\x80\x00', 'HeaderLength')
v0 = bytes([0x12, 0x20]) + hashlib.sha256(block).digest()
cases['section-cidv0.car'] = (car(header(good), [(v0, block)]), 'BlockCid { offset: 59, error: Version0 }')
identity = bytes([1, 0x71, 0x00, len(block)]) + block
cases['section-identity-hash.car'] = (car(header(good), [(identity + b'\x00' * (32 - len(block)), block)]), 'BlockCid { offset: 59, error: IdentityHash }')
cases['section-sha512.car'] = (car(header(good), [(bytes([1, 0x71, 0x13, 32]) + hashlib.sha256(block).digest(), block)]), 'BlockCid { offset: 59, error: UnsupportedHash(19) }')
cases['section-dag-pb.car'] = (car(header(good), [(cid(block, codec=0x70), block)]), 'BlockCid { offset: 59, error: UnsupportedCodec(112) }')
cases['section-hash-mismatch.car'] = (car(header(good), [(good, b'\x62ho')]), 'HashMismatch')
whole = car(header(good), [(good, block)])
cases['section-truncated.car'] = (whole[:-1], 'SectionLength')
cases['section-length-overflow.car'] = (car(header(good), []) + varint(1 << 62), 'BlockTooLarge')
cases['section-zero-length.car'] = (whole + b'\x00', 'BlockCid')
cases['section-huge-claim.car'] = (car(header(good), []) + varint(1 << 20) + good, 'SectionLength')

with open('EXPECTED', 'w') as f:
    f.write('# file<TAB>expected error (prefix of its Debug form)\n')
    for name, (data, expected) in sorted(cases.items()):
        with open(name, 'wb') as out:
            out.write(data)
        f.write(f'{name}\t{expected}\n')
