// Verify a facegate door event in Node.js (Node-RED function node style), with only the built-in `crypto` module.
//
// The signature covers the canonical payload: the event without "signature", UTF-8 JSON, sorted keys, no spaces.
// The daemon publishes exactly that form with the signature member added, so the canonical bytes are the message
// with its one "signature" member cut out. Working on the bytes avoids re-serialising numbers, which JavaScript
// writes differently from Python (1.2e-05 vs 0.000012, 1.0 vs 1): never JSON.stringify an event to verify it.
//
// Version 2: Ed25519 (`alg` "ed25519", `kid` picks the public key). Version 1: HMAC-SHA256 with the shared key.
// mayOpen() then makes the door agent's other checks: own door, type grant, expiry, TTL bound, clock skew, replay.
// In Node-RED: add `crypto` under the function node's Setup → Modules, keep `seen` in context, and call
//   msg.payload = mayOpen(msg.payload, {door: "front", keys: {[KID]: PEM}, seen: context.get("seen")});
'use strict';
const crypto = require('crypto');

function checkSignature(raw, keys, hmacKey) {            // raw: Buffer or string; keys: {kid: PEM public key}
  const text = Buffer.isBuffer(raw) ? raw.toString('utf8') : String(raw);
  const members = text.match(/"signature":/g) || [];
  const m = /([,{])"signature":"([0-9a-f]*)"([,}])/.exec(text);
  if (members.length !== 1 || !m) return { ok: false, reason: 'missing_key' };
  const cut = m[1] === '{' ? m[1] + (m[3] === ',' ? '' : m[3]) : (m[3] === '}' ? m[3] : ',');
  const body = Buffer.from(text.slice(0, m.index) + cut + text.slice(m.index + m[0].length), 'utf8');
  let event;
  try { event = JSON.parse(text); } catch (e) { return { ok: false, reason: 'bad_json' }; }
  if (event === null || typeof event !== 'object' || Array.isArray(event)) return { ok: false, reason: 'not_object' };
  const sig = m[2];
  if (event.version === 2) {
    if (event.alg !== 'ed25519') return { ok: false, reason: 'bad_alg' };
    const pem = Object.prototype.hasOwnProperty.call(keys, event.kid) ? keys[event.kid] : undefined;
    if (!pem) return { ok: false, reason: 'unknown_key' };
    if (sig.length !== 128) return { ok: false, reason: 'bad_signature' };
    const good = crypto.verify(null, body, crypto.createPublicKey(pem), Buffer.from(sig, 'hex'));
    return good ? { ok: true, event } : { ok: false, reason: 'bad_signature' };
  }
  if (event.version === 1) {
    if (!hmacKey) return { ok: false, reason: 'hmac_not_allowed' };
    const want = crypto.createHmac('sha256', hmacKey).update(body).digest();
    const got = Buffer.from(sig, 'hex');
    const good = got.length === want.length && crypto.timingSafeEqual(got, want);
    return good ? { ok: true, event } : { ok: false, reason: 'bad_signature' };
  }
  return { ok: false, reason: 'unsupported_version' };
}

function mayOpen(raw, { door, keys, hmacKey = null, maxTtlS = 5, maxSkewS = 2, seen = new Map(), now = Date.now() }) {
  const sig = checkSignature(raw, keys, hmacKey);
  if (!sig.ok) return sig;
  const e = sig.event;
  if (e.door !== door) return { ok: false, reason: 'wrong_door' };
  if (e.type !== 'grant') return { ok: false, reason: 'not_grant' };
  const decided = Date.parse(e.decided_at), expires = Date.parse(e.expires_at);  // RFC 3339 with Z or an offset
  if (typeof e.expires_at !== 'string' || !/(Z|[+-]\d\d:\d\d)$/.test(e.expires_at) || isNaN(decided) || isNaN(expires)) {
    return { ok: false, reason: 'bad_time' };
  }
  if (expires <= now) return { ok: false, reason: 'expired' };
  if (expires - decided > maxTtlS * 1000 || expires - now > (maxTtlS + maxSkewS) * 1000) return { ok: false, reason: 'ttl_too_long' };
  if (decided > now + maxSkewS * 1000) return { ok: false, reason: 'from_future' };
  for (const [id, exp] of seen) if (exp < now) seen.delete(id);  // bounded: only unexpired grants are kept
  if (typeof e.event_id !== 'string' || seen.has(e.event_id)) return { ok: false, reason: 'replay' };
  seen.set(e.event_id, expires);
  return { ok: true, event_id: e.event_id };
}

module.exports = { checkSignature, mayOpen };

// Command line (used by tests/test_door_js.py): node verify_event.js DOOR PUBKEY.pem [HMAC_KEY_FILE] < messages
// one message per line on stdin → one JSON verdict per line on stdout.
if (require.main === module) {
  const fs = require('fs');
  const [door, pubFile, hmacFile] = process.argv.slice(2);
  const pem = fs.readFileSync(pubFile, 'utf8');
  const raw = crypto.createPublicKey(pem).export({ format: 'der', type: 'spki' }).subarray(-32);
  const kid = crypto.createHash('sha256').update(raw).digest('hex').slice(0, 16);   // facegate's key id
  const hmacKey = hmacFile ? Buffer.from(fs.readFileSync(hmacFile, 'latin1').trim(), 'latin1') : null;
  const seen = new Map();
  for (const line of fs.readFileSync(0, 'utf8').split('\n').filter((l) => l.length > 0)) {
    const verdict = mayOpen(Buffer.from(line, 'utf8'), { door, keys: { [kid]: pem }, hmacKey, seen });
    process.stdout.write(JSON.stringify({ ok: verdict.ok, reason: verdict.reason || null }) + '\n');
  }
}
