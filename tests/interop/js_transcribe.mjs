// The JavaScript SDK v3 Transcribe Streaming client (the client LCA itself uses; HTTP/2)
// against `lca-kvs local`: streams the sample call and checks each turn comes back on its
// channel. Usage: node js_transcribe.mjs CALLER.raw AGENT.raw (with the exports set).
import { readFileSync } from 'node:fs';
import { TranscribeStreamingClient, StartStreamTranscriptionCommand } from '@aws-sdk/client-transcribe-streaming';

const [callerPath, agentPath] = process.argv.slice(2);
const caller = readFileSync(callerPath);
const agent = readFileSync(agentPath);
const stereo = Buffer.alloc(caller.length * 2);
for (let i = 0; i < caller.length / 2; i++) {
  caller.copy(stereo, 4 * i, 2 * i, 2 * i + 2);
  agent.copy(stereo, 4 * i + 2, 2 * i, 2 * i + 2);
}
const client = new TranscribeStreamingClient({
  region: 'us-east-1',
  endpoint: process.env.AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING,
  credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
});
async function* audio() {
  for (let at = 0; at < stereo.length; at += 3200) {
    yield { AudioEvent: { AudioChunk: stereo.subarray(at, at + 3200) } };
  }
}
const response = await client.send(new StartStreamTranscriptionCommand({
  LanguageCode: 'en-US',
  MediaSampleRateHertz: 8000,
  MediaEncoding: 'pcm',
  EnableChannelIdentification: true,
  NumberOfChannels: 2,
  AudioStream: audio(),
}));
const finals = { ch_0: 0, ch_1: 0 };
for await (const event of response.TranscriptResultStream) {
  for (const result of event.TranscriptEvent?.Transcript?.Results ?? []) {
    if (!result.IsPartial) finals[result.ChannelId] += 1;
  }
}
client.destroy();
if (finals.ch_0 !== 5 || finals.ch_1 !== 6) {
  console.error(`js transcribe: expected 5 caller and 6 agent turns, got ${JSON.stringify(finals)}`);
  process.exit(1);
}
console.log(`JS SDK v3 interop: StartStreamTranscription over HTTP/2 returned ${finals.ch_0} caller and ${finals.ch_1} agent turns`);
