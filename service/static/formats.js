// Client-side readers of the 3D formats the API accepts, for display only (the server does the real,
// validated parsing): each returns a Float32Array of x, y, z triples. Meshes (PLY/OFF/OBJ with faces)
// are shown as their vertices plus points sampled on the faces, so sparse meshes still look solid.
// The content picks the reader (sniff.js); the name only when the content is not recognisable.
import { SNIFF_BYTES, extension, sniff } from './sniff.js';
import { BufferGeometry, PLYLoader } from './vendor/three/three.min.js';

const MAX_DISPLAY_POINTS = 200000;
const FACE_SAMPLES = 8192;

/** Parse `buffer` (ArrayBuffer) named `name`; throws Error with a short message when it cannot. */
export function parsePoints(buffer, name) {
  const found = sniff(new Uint8Array(buffer, 0, Math.min(SNIFF_BYTES, buffer.byteLength)));
  const format = found?.kind === 'points' ? found.format : extension(name);
  let result;
  switch (format) {
    case 'ply': result = parsePly(buffer); break;
    case 'npy': result = { xyz: parseNpy(buffer) }; break;
    case 'off': result = parseOff(text(buffer)); break;
    case 'obj': result = parseObj(text(buffer)); break;
    case 'pcd': result = { xyz: parsePcd(buffer) }; break;
    default: result = { xyz: parseTable(text(buffer)) };
  }
  let xyz = result.xyz;
  if (result.faces && result.faces.length) xyz = concat(xyz, sampleFaces(xyz, result.faces, FACE_SAMPLES));
  xyz = finite(xyz);
  if (xyz.length < 3) throw new Error('no points found');
  return subsample(xyz, MAX_DISPLAY_POINTS);
}

function text(buffer) {
  return new TextDecoder('utf-8', { fatal: false }).decode(buffer);
}

function parsePly(buffer) {
  const head = text(buffer.slice(0, 4));
  if (!head.startsWith('ply')) throw new Error('not a PLY file (no "ply" header)');
  // PLYLoader bounds the raw vertices as it parses, NaN rows included (three.js then logs "Computed radius
  // is NaN"); the view bounds only the finite points (finite() below), so skip that bound here.
  const bound = BufferGeometry.prototype.computeBoundingSphere;
  BufferGeometry.prototype.computeBoundingSphere = function skipBound() {};
  let geometry;
  try {
    geometry = new PLYLoader().parse(buffer);
  } finally {
    BufferGeometry.prototype.computeBoundingSphere = bound;
  }
  const pos = geometry.getAttribute('position');
  if (!pos || pos.count === 0) throw new Error('the PLY file has no vertices');
  const xyz = new Float32Array(pos.count * 3);
  for (let i = 0; i < pos.count; i++) {
    xyz[3 * i] = pos.getX(i); xyz[3 * i + 1] = pos.getY(i); xyz[3 * i + 2] = pos.getZ(i);
  }
  const index = geometry.getIndex();
  return { xyz, faces: index ? Uint32Array.from(index.array) : null };
}

function numbers(line) {
  return line.trim().split(/[\s,;]+/).filter((s) => s.length).map(Number);
}

function lines(str) {
  return str.split(/\r?\n/).map((l) => l.replace(/#.*$/, '').trim()).filter((l) => l.length);
}

function parseTable(str) {
  const out = [];
  for (const line of lines(str)) {
    const v = numbers(line);
    if (v.length >= 3 && v.slice(0, 3).every(Number.isFinite)) out.push(v[0], v[1], v[2]);
  }
  if (!out.length) throw new Error('no rows of x y z numbers');
  return Float32Array.from(out);
}

function parseOff(str) {
  const ls = lines(str);
  if (!ls.length || !/^[A-Z]*OFF/.test(ls[0])) throw new Error('not an OFF file');
  let rest = ls[0].replace(/^[A-Z]*OFF/, '').trim();
  let i = 1;
  if (!rest) rest = ls[i++] || '';
  const [nv, nf] = numbers(rest);
  if (!Number.isInteger(nv) || nv <= 0 || i + nv > ls.length) throw new Error('bad OFF vertex count');
  const xyz = new Float32Array(nv * 3);
  for (let v = 0; v < nv; v++) {
    const p = numbers(ls[i + v]);
    xyz[3 * v] = p[0]; xyz[3 * v + 1] = p[1]; xyz[3 * v + 2] = p[2];
  }
  i += nv;
  const faces = [];
  for (let f = 0; f < (nf || 0) && i + f < ls.length; f++) {
    const p = numbers(ls[i + f]);
    fan(p.slice(1, 1 + p[0]), nv, faces);
  }
  return { xyz, faces };
}

function parseObj(str) {
  const verts = [];
  const faces = [];
  for (const line of lines(str)) {
    if (line.startsWith('v ')) {
      const p = numbers(line.slice(2));
      verts.push(p[0], p[1], p[2]);
    } else if (line.startsWith('f ')) {
      const n = verts.length / 3;
      const idx = line.slice(2).trim().split(/\s+/).map((t) => {
        const k = parseInt(t.split('/')[0], 10);
        return k < 0 ? n + k : k - 1;
      });
      fan(idx, n, faces);
    }
  }
  if (!verts.length) throw new Error('no "v" lines');
  return { xyz: Float32Array.from(verts), faces };
}

function fan(idx, n, out) {
  for (let k = 1; k + 1 < idx.length; k++) {
    const a = idx[0], b = idx[k], c = idx[k + 1];
    if ([a, b, c].every((j) => Number.isInteger(j) && j >= 0 && j < n)) out.push(a, b, c);
  }
}

const NPY_TYPES = { f4: Float32Array, f8: Float64Array, i1: Int8Array, i2: Int16Array, i4: Int32Array,
                    u1: Uint8Array, u2: Uint16Array, u4: Uint32Array };

function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== 0x93 || text(buffer.slice(1, 6)) !== 'NUMPY') throw new Error('not a .npy file');
  const major = bytes[6];
  const dv = new DataView(buffer);
  const hlen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = text(buffer.slice(start, start + hlen));
  const descr = /'descr':\s*'([<>|=]?)([a-z]\d+)'/.exec(header);
  const shapeM = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !shapeM) throw new Error('unreadable .npy header');
  if (descr[1] === '>') throw new Error('big-endian .npy is not displayed');
  const Type = NPY_TYPES[descr[2]];
  if (!Type) throw new Error(`.npy dtype ${descr[2]} is not displayed`);
  const shape = shapeM[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const cols = shape[shape.length - 1];
  if (shape.length < 2 || cols < 3) throw new Error('.npy array must be [N, 3] (or more columns)');
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const offset = start + hlen;
  const data = new Type(buffer.slice(offset, offset + rows * cols * Type.BYTES_PER_ELEMENT));
  const fortran = /'fortran_order':\s*True/.test(header);
  const xyz = new Float32Array(rows * 3);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < 3; c++) xyz[3 * r + c] = fortran ? data[c * rows + r] : data[r * cols + c];
  }
  return xyz;
}

const PCD_TYPES = { F4: 'getFloat32', F8: 'getFloat64', I1: 'getInt8', I2: 'getInt16', I4: 'getInt32',
                    U1: 'getUint8', U2: 'getUint16', U4: 'getUint32' };

function parsePcd(buffer) {
  const headText = text(buffer.slice(0, Math.min(buffer.byteLength, 4096)));
  const m = /^DATA\s+(\S+)[^\n]*\n/m.exec(headText);
  if (!m) throw new Error('no DATA line in the PCD header');
  const header = {};
  for (const line of headText.slice(0, m.index).split(/\r?\n/)) {
    const parts = line.trim().split(/\s+/);
    if (parts[0] && !parts[0].startsWith('#')) header[parts[0]] = parts.slice(1);
  }
  const fields = header.FIELDS || [];
  const ix = fields.indexOf('x');
  if (ix < 0 || fields.indexOf('y') < 0 || fields.indexOf('z') < 0) throw new Error('PCD has no x y z fields');
  const counts = (header.COUNT || fields.map(() => '1')).map(Number);
  const dataStart = new TextEncoder().encode(headText.slice(0, m.index + m[0].length)).length;
  const mode = m[1].toLowerCase();
  if (mode === 'ascii') {
    const rows = lines(text(buffer.slice(dataStart)));
    const col = (name) => fields.slice(0, fields.indexOf(name)).reduce((a, _, k) => a + counts[k], 0);
    const cx = col('x'), cy = col('y'), cz = col('z');
    const xyz = new Float32Array(rows.length * 3);
    rows.forEach((row, r) => {
      const v = numbers(row);
      xyz[3 * r] = v[cx]; xyz[3 * r + 1] = v[cy]; xyz[3 * r + 2] = v[cz];
    });
    return xyz;
  }
  if (mode !== 'binary') throw new Error(`PCD DATA ${mode} is not displayed`);
  const sizes = (header.SIZE || []).map(Number);
  const types = header.TYPE || [];
  const offsets = [];
  let stride = 0;
  fields.forEach((_, k) => { offsets.push(stride); stride += sizes[k] * counts[k]; });
  const n = Number((header.POINTS || header.WIDTH || ['0'])[0]);
  const dv = new DataView(buffer, dataStart);
  const read = (name, r) => {
    const k = fields.indexOf(name);
    return dv[PCD_TYPES[types[k] + sizes[k]]](r * stride + offsets[k], true);
  };
  const rowsAvail = Math.min(n, Math.floor(dv.byteLength / Math.max(stride, 1)));
  const xyz = new Float32Array(rowsAvail * 3);
  for (let r = 0; r < rowsAvail; r++) {
    xyz[3 * r] = read('x', r); xyz[3 * r + 1] = read('y', r); xyz[3 * r + 2] = read('z', r);
  }
  return xyz;
}

function sampleFaces(xyz, faces, n) {
  const nf = faces.length / 3;
  const cum = new Float64Array(nf);
  let total = 0;
  for (let f = 0; f < nf; f++) {
    const [a, b, c] = [faces[3 * f], faces[3 * f + 1], faces[3 * f + 2]].map((i) => 3 * i);
    const ux = xyz[b] - xyz[a], uy = xyz[b + 1] - xyz[a + 1], uz = xyz[b + 2] - xyz[a + 2];
    const vx = xyz[c] - xyz[a], vy = xyz[c + 1] - xyz[a + 1], vz = xyz[c + 2] - xyz[a + 2];
    const cx = uy * vz - uz * vy, cy = uz * vx - ux * vz, cz = ux * vy - uy * vx;
    const area = Math.sqrt(cx * cx + cy * cy + cz * cz);
    total += Number.isFinite(area) ? area : 0;
    cum[f] = total;
  }
  if (!(total > 0)) return new Float32Array(0);
  const out = new Float32Array(n * 3);
  for (let s = 0; s < n; s++) {
    const t = Math.random() * total;
    let lo = 0, hi = nf - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (cum[mid] < t) lo = mid + 1; else hi = mid; }
    const [a, b, c] = [faces[3 * lo], faces[3 * lo + 1], faces[3 * lo + 2]].map((i) => 3 * i);
    let r1 = Math.random(), r2 = Math.random();
    if (r1 + r2 > 1) { r1 = 1 - r1; r2 = 1 - r2; }
    for (let d = 0; d < 3; d++) {
      out[3 * s + d] = xyz[a + d] + r1 * (xyz[b + d] - xyz[a + d]) + r2 * (xyz[c + d] - xyz[a + d]);
    }
  }
  return out;
}

function concat(a, b) {
  const out = new Float32Array(a.length + b.length);
  out.set(a); out.set(b, a.length);
  return out;
}

function finite(xyz) {
  let bad = 0;
  for (let i = 0; i < xyz.length; i += 3) {
    if (!(Number.isFinite(xyz[i]) && Number.isFinite(xyz[i + 1]) && Number.isFinite(xyz[i + 2]))) bad++;
  }
  if (!bad) return xyz;
  const out = new Float32Array(xyz.length - 3 * bad);
  let j = 0;
  for (let i = 0; i < xyz.length; i += 3) {
    if (Number.isFinite(xyz[i]) && Number.isFinite(xyz[i + 1]) && Number.isFinite(xyz[i + 2])) {
      out[j++] = xyz[i]; out[j++] = xyz[i + 1]; out[j++] = xyz[i + 2];
    }
  }
  return out;
}

function subsample(xyz, max) {
  const n = xyz.length / 3;
  if (n <= max) return xyz;
  const step = n / max;
  const out = new Float32Array(max * 3);
  for (let k = 0; k < max; k++) {
    const i = Math.floor(k * step) * 3;
    out[3 * k] = xyz[i]; out[3 * k + 1] = xyz[i + 1]; out[3 * k + 2] = xyz[i + 2];
  }
  return out;
}
