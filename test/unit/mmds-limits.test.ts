import { MmdsService, parseRequest } from '../../src/devices/mmds/service';
import { controlHandler } from '../../src/vmm/control-handler';
import { MAX_JSON_DEPTH } from '../../src/config/json-depth';

/**
 * What the API can store in MMDS is bounded (128 levels, the size limit), and whatever can be
 * stored, the guest can read back at every path, as text or JSON, without deep recursion and with
 * output no larger than the contents.
 */
const SIZE_LIMIT = 51200;

function get(s: MmdsService, path: string, json: boolean) {
  const r = parseRequest(Buffer.from(`GET ${path} HTTP/1.1\r\n${json ? 'Accept: application/json\r\n' : ''}\r\n`, 'latin1'));
  if (r.kind !== 'request') throw new Error(`unparsable ${path}`);
  return s.handle(r.request);
}

function store() {
  const service = new MmdsService({ version: 'V1', imdsCompat: false });
  service.setData({});
  const handle = controlHandler({ mmds: { service, sizeLimit: SIZE_LIMIT }, limiters: new Map(), log: { info: () => undefined } });
  return { service, handle };
}

/** An object chain `depth` levels deep (the outermost object counts), each level with a few siblings. */
function deepDoc(depth: number) {
  const root: Record<string, unknown> = {};
  let at = root;
  for (let d = 1; d < depth; d++) {
    const next: Record<string, unknown> = {};
    at[`k${d}`] = next;
    at.list = [1, 'two', null, true];
    at['__proto__'] = 'data';
    at = next;
  }
  at.leaf = 'bottom';
  return root;
}

test('contents 128 levels deep are stored and every level reads back as text and as JSON, bounded by the contents', () => {
  const { service, handle } = store();
  const doc = JSON.parse(JSON.stringify(deepDoc(MAX_JSON_DEPTH)));
  expect(handle({ op: 'mmds-put', data: doc })).toEqual({ ok: true });
  const size = JSON.stringify(service.getData()).length;
  let path = '';
  for (let d = 1; d <= MAX_JSON_DEPTH; d++) {
    for (const json of [true, false]) {
      const r = get(service, `${path}/`, json);
      expect(r.status).toBe(200);
      expect(r.body.length).toBeLessThanOrEqual(size);
    }
    if (d === MAX_JSON_DEPTH) break;
    expect(get(service, `${path}/list`, false).status).toBe(501);
    expect(JSON.parse(get(service, `${path}/list`, true).body)).toEqual([1, 'two', null, true]);
    path += `/k${d}`;
  }
  expect(get(service, `${path}/leaf`, false).body).toBe('bottom');
  // A merge patch as deep as allowed merges all the way down.
  expect(handle({ op: 'mmds-patch', data: JSON.parse(JSON.stringify(deepDoc(MAX_JSON_DEPTH))) })).toEqual({ ok: true });
});

test('contents one level too deep are refused, by PUT and by PATCH, and the store keeps what it had', () => {
  const { service, handle } = store();
  expect(handle({ op: 'mmds-put', data: { keep: 1 } })).toEqual({ ok: true });
  for (const op of ['mmds-put', 'mmds-patch']) {
    const r = handle({ op, data: deepDoc(MAX_JSON_DEPTH + 1) });
    expect(r).toMatchObject({ ok: false, status: 400 });
    expect((r as { message: string }).message).toMatch(/at most 128 levels/);
  }
  let deepArray: unknown = 1;
  for (let i = 0; i < 10_000; i++) deepArray = [deepArray];
  expect(handle({ op: 'mmds-put', data: { a: deepArray } })).toMatchObject({ ok: false, status: 400 });
  expect(service.getData()).toEqual({ keep: 1 });
});

test('contents at the size limit: the whole store reads back as JSON and text, no larger than the contents', () => {
  const { service, handle } = store();
  const doc: Record<string, string> = {};
  for (let i = 0; JSON.stringify(doc).length < SIZE_LIMIT - 200; i++) doc[`key-${i}`] = 'v'.repeat(i % 50);
  expect(handle({ op: 'mmds-put', data: doc })).toEqual({ ok: true });
  const size = JSON.stringify(doc).length;
  expect(get(service, '/', true).body.length).toBe(size);
  expect(get(service, '/', false).body.length).toBeLessThanOrEqual(size);
  const over = handle({ op: 'mmds-patch', data: { more: 'x'.repeat(400) } });
  // 413 Payload Too Large, as Firecracker answers when its MMDS data store's limit is exceeded.
  expect(over).toMatchObject({ ok: false, status: 413 });
  expect((over as { message: string }).message).toMatch(/limit is 51200/);
});

test('malformed control requests are refused, not thrown', () => {
  const { handle } = store();
  for (const req of [null, 5, 'x', [], {}, { op: 'limiters' }, { op: 'limiters', kind: 'drive' }, { op: 'limiters', kind: 'drive', id: 3 }, { op: 'limiters', kind: 'nope', id: 'a' }, { op: 'mmds-put' }, { op: 'mmds-put', data: [1] }, { op: 'mmds-patch', data: null }]) {
    const r = handle(req);
    expect(r).toMatchObject({ ok: false, status: 400 });
  }
});
