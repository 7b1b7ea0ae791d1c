// The JavaScript SDK v3 clients LCA's own transcriber uses besides Transcribe, with their
// default HTTP handlers, against `lca-kvs local` with moto: Kinesis (HTTP/2 only, to the
// exported Kinesis endpoint) PutRecord, PutRecords and GetRecords; S3 put/get; DynamoDB
// put/get. Usage: node js_kinesis_s3_dynamodb.mjs (with the exports set).
import { KinesisClient, PutRecordCommand, PutRecordsCommand, ListShardsCommand, GetShardIteratorCommand, GetRecordsCommand } from '@aws-sdk/client-kinesis';
import { S3Client, CreateBucketCommand, PutObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { DynamoDBClient, CreateTableCommand, PutItemCommand, GetItemCommand } from '@aws-sdk/client-dynamodb';

const common = { region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } };
const fail = (what) => { console.error(`js interop: ${what}`); process.exit(1); };

const kinesis = new KinesisClient({ ...common, endpoint: process.env.AWS_ENDPOINT_URL_KINESIS });
const StreamName = process.env.KINESIS_STREAM_NAME;
const one = await kinesis.send(new PutRecordCommand({ StreamName, PartitionKey: 'call-1', Data: Buffer.from('{"EventType":"START"}') }));
if (!one.SequenceNumber) fail(`PutRecord returned no sequence number: ${JSON.stringify(one)}`);
const many = await kinesis.send(new PutRecordsCommand({
  StreamName,
  Records: [1, 2, 3].map((i) => ({ PartitionKey: 'call-1', Data: Buffer.from(`segment ${i}`) })),
}));
if (many.FailedRecordCount !== 0 || many.Records.length !== 3) fail(`PutRecords: ${JSON.stringify(many)}`);
const shards = await kinesis.send(new ListShardsCommand({ StreamName }));
const read = [];
for (const shard of shards.Shards) {
  const { ShardIterator } = await kinesis.send(new GetShardIteratorCommand({ StreamName, ShardId: shard.ShardId, ShardIteratorType: 'TRIM_HORIZON' }));
  const records = await kinesis.send(new GetRecordsCommand({ ShardIterator }));
  read.push(...records.Records.map((r) => Buffer.from(r.Data).toString()));
}
const expected = ['{"EventType":"START"}', 'segment 1', 'segment 2', 'segment 3'];
if (JSON.stringify(read) !== JSON.stringify(expected)) fail(`GetRecords returned ${JSON.stringify(read)}`);
kinesis.destroy();

const s3 = new S3Client({ ...common, endpoint: process.env.AWS_ENDPOINT_URL_S3, forcePathStyle: true });
await s3.send(new CreateBucketCommand({ Bucket: 'js-interop' }));
await s3.send(new PutObjectCommand({ Bucket: 'js-interop', Key: 'lca-audio-recordings/c.wav', Body: Buffer.from('RIFF....WAVE') }));
const object = await s3.send(new GetObjectCommand({ Bucket: 'js-interop', Key: 'lca-audio-recordings/c.wav' }));
const body = await object.Body.transformToString();
if (body !== 'RIFF....WAVE') fail(`S3 GetObject returned ${JSON.stringify(body)}`);
s3.destroy();

const dynamodb = new DynamoDBClient({ ...common, endpoint: process.env.AWS_ENDPOINT_URL_DYNAMODB });
await dynamodb.send(new CreateTableCommand({
  TableName: 'js-interop',
  AttributeDefinitions: [{ AttributeName: 'PK', AttributeType: 'S' }],
  KeySchema: [{ AttributeName: 'PK', KeyType: 'HASH' }],
  BillingMode: 'PAY_PER_REQUEST',
}));
await dynamodb.send(new PutItemCommand({ TableName: 'js-interop', Item: { PK: { S: 'contact#c' }, Status: { S: 'RUNNING' } } }));
const item = await dynamodb.send(new GetItemCommand({ TableName: 'js-interop', Key: { PK: { S: 'contact#c' } } }));
if (item.Item?.Status?.S !== 'RUNNING') fail(`DynamoDB GetItem returned ${JSON.stringify(item)}`);
dynamodb.destroy();

console.log(`JS SDK v3 interop: Kinesis over HTTP/2 put ${1 + many.Records.length} records and read them back in order; S3 and DynamoDB put/get with the default handlers`);
