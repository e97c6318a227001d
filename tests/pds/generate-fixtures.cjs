// Generates real-data fixtures from the reference PDS + PLC on loopback:
// an io.atcr.manifest record written through the PDS, its getRecord proof CARs, the DID
// document in both forms, the PLC audit log and a whole-repo export. Output: tests/fixtures/pds/.
// Run: tests/pds/generate-fixtures.sh (installs the npm packages first).
'use strict'
const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const { startServers } = require('./servers.cjs')

const out = path.resolve(__dirname, '../fixtures/pds')

async function xrpc(base, method, nsid, { params, body, token, raw } = {}) {
  const url = new URL(`/xrpc/${nsid}`, base)
  for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v)
  const res = await fetch(url, {
    method,
    headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  })
  if (raw) return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()), type: res.headers.get('content-type') }
  const json = await res.json()
  if (!res.ok) throw new Error(`${nsid}: ${res.status} ${JSON.stringify(json)}`)
  return json
}

async function main() {
  const servers = await startServers(path.join(require('os').tmpdir(), 'atproto-verifier-fixtures'))
  try {
    const { pdsUrl, plcUrl } = servers
    const account = await xrpc(pdsUrl, 'POST', 'com.atproto.server.createAccount', {
      body: { handle: 'alice.test', email: 'alice@example.com', password: 'not-a-secret-' + crypto.randomBytes(4).toString('hex') },
    })
    const { did, accessJwt: token } = account
    // 300 filler records first, so the MST has several layers.
    for (let batch = 0; batch < 3; batch++) {
      const writes = []
      for (let i = 0; i < 100; i++) {
        writes.push({ $type: 'com.atproto.repo.applyWrites#create', collection: 'app.example.filler', value: { $type: 'app.example.filler', n: batch * 100 + i } })
      }
      await xrpc(pdsUrl, 'POST', 'com.atproto.repo.applyWrites', { token, body: { repo: did, validate: false, writes } })
    }
    const manifest = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', layers: [] })
    const digest = 'sha256:' + crypto.createHash('sha256').update(manifest).digest('hex')
    const hexRkey = digest.slice('sha256:'.length)
    const record = (repository) => ({
      $type: 'io.atcr.manifest',
      repository,
      digest,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      schemaVersion: 2,
      holdDid: 'did:web:hold.example.com',
      createdAt: new Date().toISOString(),
      annotations: { 'org.opencontainers.image.title': 'myapp' },
    })
    // One record keyed by the digest's hex (the cheap lookup), one by a TID (as createRecord does).
    await xrpc(pdsUrl, 'POST', 'com.atproto.repo.createRecord', { token, body: { repo: did, collection: 'io.atcr.manifest', rkey: hexRkey, validate: false, record: record('myapp') } })
    const tidRecord = await xrpc(pdsUrl, 'POST', 'com.atproto.repo.createRecord', { token, body: { repo: did, collection: 'io.atcr.manifest', validate: false, record: record('myapp') } })
    const tidRkey = tidRecord.uri.split('/').pop()

    const proof = async (rkey) => {
      const r = await xrpc(pdsUrl, 'GET', 'com.atproto.sync.getRecord', { params: { did, collection: 'io.atcr.manifest', rkey }, raw: true })
      if (r.status !== 200) throw new Error(`getRecord ${rkey}: ${r.status} ${r.bytes}`)
      return r.bytes
    }
    fs.mkdirSync(out, { recursive: true })
    fs.writeFileSync(path.join(out, 'manifest-hex-rkey.car'), await proof(hexRkey))
    fs.writeFileSync(path.join(out, 'manifest-tid-rkey.car'), await proof(tidRkey))
    const absentRkey = 'f'.repeat(64)
    const absent = await xrpc(pdsUrl, 'GET', 'com.atproto.sync.getRecord', { params: { did, collection: 'io.atcr.manifest', rkey: absentRkey }, raw: true })
    fs.writeFileSync(path.join(out, 'absent.car'), absent.bytes)

    // DID documents: the PLC's own rendering (legacy form) and the Multikey form from /data.
    const legacy = await (await fetch(`${plcUrl}/${did}`)).json()
    const data = await (await fetch(`${plcUrl}/${did}/data`)).json()
    const auditLog = await (await fetch(`${plcUrl}/${did}/log/audit`)).json()
    const multikey = {
      '@context': ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/multikey/v1'],
      id: did,
      alsoKnownAs: data.alsoKnownAs,
      verificationMethod: Object.entries(data.verificationMethods).map(([name, key]) => ({
        id: `${did}#${name}`, type: 'Multikey', controller: did, publicKeyMultibase: key.replace(/^did:key:/, ''),
      })),
      service: Object.entries(data.services).map(([name, s]) => ({ id: `#${name}`, type: s.type, serviceEndpoint: s.endpoint })),
    }
    fs.writeFileSync(path.join(out, 'did-legacy.json'), JSON.stringify(legacy, null, 2) + '\n')
    fs.writeFileSync(path.join(out, 'did-multikey.json'), JSON.stringify(multikey, null, 2) + '\n')
    fs.writeFileSync(path.join(out, 'audit-log.json'), JSON.stringify(auditLog, null, 2) + '\n')

    // Deleting the hex-keyed record: the next proof shows absence (a revoked image).
    await xrpc(pdsUrl, 'POST', 'com.atproto.repo.deleteRecord', { token, body: { repo: did, collection: 'io.atcr.manifest', rkey: hexRkey } })
    fs.writeFileSync(path.join(out, 'deleted.car'), await proof(hexRkey))
    const repo = await xrpc(pdsUrl, 'GET', 'com.atproto.sync.getRepo', { params: { did }, raw: true })
    fs.writeFileSync(path.join(out, 'repo.car'), repo.bytes)

    const meta = { did, handle: 'alice.test', digest, repository: 'myapp', hexRkey, tidRkey, absentRkey, absentStatus: absent.status, generatedAt: new Date().toISOString(), pds: '@atproto/pds ' + require('@atproto/pds/package.json').version, plc: '@did-plc/server ' + require('@did-plc/server/package.json').version }
    fs.writeFileSync(path.join(out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n')
    console.log(JSON.stringify(meta, null, 2))
  } finally {
    await servers.stop()
  }
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1) })
