// The independent side of the 国密 interoperability tests: sm-crypto (pure
// JavaScript, pinned in package.json) under Node.js.
//
//   node tests/gm/sm.mjs < ops.json > results.json
//
// stdin: a JSON array of operations; stdout: a JSON array of results, one per
// operation, in order.  Bytes travel as hex.  sm-crypto's own conventions:
// public keys 04||x||y hex, signatures raw r||s hex unless `der`, ciphertexts
// hex without the 04 point prefix, cipherMode 1 = C1C3C2, 0 = C1C2C3.  Any
// framing beyond that (a 04 prefix, base64) is the Python side's business.
// An operation that throws yields {"error": message}: the tests decide.
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'

const require = createRequire(import.meta.url)
const { sm2, sm3, sm4 } = require('sm-crypto')

const bytes = (hex) => Array.from(Buffer.from(hex, 'hex'))
const hex = (arr) => Buffer.from(arr).toString('hex')

const ops = {
  keypair: () => sm2.generateKeyPairHex(),
  sign: (o) => sm2.doSignature(bytes(o.msg), o.priv, { der: !!o.der, hash: true, publicKey: o.pub, userId: o.user_id }),
  verify: (o) => sm2.doVerifySignature(bytes(o.msg), o.sig, o.pub, { der: !!o.der, hash: true, userId: o.user_id }),
  encrypt: (o) => sm2.doEncrypt(bytes(o.msg), o.pub, o.mode),
  // sm-crypto answers a failed C3 check with an empty array
  decrypt: (o) => {
    const out = sm2.doDecrypt(o.ct, o.priv, o.mode, { output: 'array' })
    return out.length ? hex(out) : null
  },
  sm3: (o) => sm3(bytes(o.msg)),
  sm4_encrypt: (o) => hex(sm4.encrypt(bytes(o.data), o.key, { mode: o.mode, iv: o.iv, padding: o.padding || 'pkcs#7', output: 'array' })),
  sm4_decrypt: (o) => hex(sm4.decrypt(bytes(o.data), o.key, { mode: o.mode, iv: o.iv, padding: o.padding || 'pkcs#7', output: 'array' })),
}

const input = JSON.parse(readFileSync(0, 'utf8'))
const results = input.map((o) => {
  const fn = ops[o.op]
  if (!fn) return { error: `unknown op ${o.op}` }
  try {
    return { ok: fn(o) }
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) }
  }
})
process.stdout.write(JSON.stringify(results))
