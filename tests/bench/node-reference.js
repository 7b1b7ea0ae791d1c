// The LCA reference's decoding logic (connect_kvs_consumer): ebml-stream's EbmlStreamDecoder
// with bufferTagIds [SimpleTag, SimpleBlock], routing SimpleBlock payloads by track name.
// Prints one JSON line: bytes, seconds, cpu_seconds, max_rss_kb, per-role payload bytes.
'use strict';
const fs = require('fs');
const { EbmlStreamDecoder, EbmlTagId } = require('ebml-stream');

const file = process.argv[2];
const started = process.hrtime.bigint();
const cpuStart = process.cpuUsage();
const decoder = new EbmlStreamDecoder({ bufferTagIds: [EbmlTagId.SimpleTag, EbmlTagId.SimpleBlock] });
const trackDictionary = {};
let currentTrackNumber = null;
const received = { AUDIO_FROM_CUSTOMER: 0, AUDIO_TO_CUSTOMER: 0 };
let contactId = null;
let lastFragment = null;
decoder.on('data', (chunk) => {
  if (chunk.id === EbmlTagId.TrackNumber) currentTrackNumber = chunk.data;
  if (chunk.id === EbmlTagId.Name) trackDictionary[chunk.data.replace(/\0+$/, '')] = currentTrackNumber;
  if (chunk.id === EbmlTagId.SimpleTag) {
    const name = chunk.Children[0].data;
    const value = chunk.Children[1] ? chunk.Children[1].data : null;
    if (name === 'AWS_KINESISVIDEO_CONTINUATION_TOKEN') lastFragment = value;
    if (name === 'ContactId') contactId = value;
  }
  if (chunk.id === EbmlTagId.SimpleBlock) {
    if (chunk.track === trackDictionary.AUDIO_FROM_CUSTOMER) received.AUDIO_FROM_CUSTOMER += chunk.payload.length;
    else if (chunk.track === trackDictionary.AUDIO_TO_CUSTOMER) received.AUDIO_TO_CUSTOMER += chunk.payload.length;
  }
});
decoder.on('error', (error) => { console.error(`node reference: ${error}`); process.exit(1); });
decoder.on('finish', () => {
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuStart);
  console.log(JSON.stringify({
    bytes: fs.statSync(file).size,
    seconds,
    cpu_seconds: (cpu.user + cpu.system) / 1e6,
    max_rss_kb: process.resourceUsage().maxRSS,
    caller_bytes: received.AUDIO_FROM_CUSTOMER,
    agent_bytes: received.AUDIO_TO_CUSTOMER,
    contact_id: contactId,
    last_fragment: lastFragment,
  }));
});
fs.createReadStream(file, { highWaterMark: 64 * 1024 }).pipe(decoder);
