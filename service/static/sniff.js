// What a file is, from its first bytes (as the server judges it: model/io/sniff.py), so that the page
// never trusts a name that disagrees with the content (a PLY named .png, a PLY named .bin). Small and
// dependency-free: the search page uses it before three.js is loaded.

export const POINT_EXTENSIONS = ['ply', 'off', 'obj', 'pcd', 'xyz', 'txt', 'csv', 'pts', 'npy'];
/** Bytes of a file's head that {@link sniff} looks at. */
export const SNIFF_BYTES = 4096;

export function extension(name) {
  const m = /\.([^./\\]+)$/.exec(name || '');
  return m ? m[1].toLowerCase() : '';
}

const OBJ_KEYWORDS = new Set(['v', 'vt', 'vn', 'vp', 'f', 'o', 'g', 's', 'l', 'p', 'mtllib', 'usemtl']);

function imageFormat(b) {
  const starts = (...bytes) => bytes.every((v, i) => b[i] === v);
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'PNG';
  if (starts(0xff, 0xd8, 0xff)) return 'JPEG';
  if (starts(0x47, 0x49, 0x46, 0x38)) return 'GIF';
  if (starts(0x49, 0x49, 0x2a, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2a)) return 'TIFF';
  if (starts(0x52, 0x49, 0x46, 0x46) && b[8] === 0x57 && b[9] === 0x45 && b[10] === 0x42 && b[11] === 0x50) return 'WebP';
  if (starts(0x42, 0x4d) && b.length >= 18 && [12, 16, 40, 52, 56, 64, 108, 124].includes(
    b[14] | (b[15] << 8) | (b[16] << 16) | (b[17] << 24))) return 'BMP';
  return null;
}

function pointFormat(b) {
  const head = new TextDecoder('latin1').decode(b);
  if (/^ply[ \t]*(\r\n|\n|\r)/.test(head)) return 'ply';
  if (head.startsWith('\x93NUMPY')) return 'npy';
  const rows = head.split(/\r\n|\n|\r/).map((l) => l.trim()).filter((l) => l.length);
  if (rows.slice(0, 4).some((l) => l.startsWith('#') && l.toUpperCase().includes('.PCD'))) return 'pcd';
  const content = rows.filter((l) => !l.startsWith('#'));
  if (!content.length) return null;
  if (/^(ST)?C?N?OFF(?=$|[\s\d+\-.])/.test(content[0])) return 'off';
  const first = content[0].split(/\s+/)[0];
  if (first === 'VERSION' || first === 'FIELDS') return 'pcd';
  if (OBJ_KEYWORDS.has(first)) return 'obj';
  const numbers = content[0].split(/[\s,;]+/).slice(0, 3);
  if (numbers.length === 3 && numbers.every((t) => t !== '' && Number.isFinite(Number(t)))) return 'xyz';
  return null;
}

/** `{kind: 'image' | 'points', format}` from the head of a file (a Uint8Array), or null when the content
 * is neither recognisably (the caller then goes by the name). */
export function sniff(head) {
  const image = imageFormat(head);
  if (image) return { kind: 'image', format: image };
  const points = pointFormat(head);
  return points ? { kind: 'points', format: points } : null;
}
