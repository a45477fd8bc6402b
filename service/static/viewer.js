// Interactive point-cloud viewer (three.js): orbit with the mouse / touch (OrbitControls) or the
// keyboard (arrows rotate, +/- zoom, 0 resets). Renders on demand, not in a loop.
import {
  BufferGeometry, Color, Float32BufferAttribute, PerspectiveCamera, Points, PointsMaterial, Scene, Spherical,
  Vector3, WebGLRenderer, OrbitControls,
} from './vendor/three/three.min.js';

export { parsePoints } from './formats.js';

const HOME = new Vector3(1.8, 1.3, 2.5);
const LOW = new Color(0x1b4f8a);
const HIGH = new Color(0xe8772e);

export class PointViewer {
  /** Throws when WebGL is not available (the caller shows a message instead). */
  constructor(container, label) {
    this.container = container;
    this.renderer = new WebGLRenderer({ antialias: true, alpha: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.setClearColor(0x000000, 0);
    const canvas = this.renderer.domElement;
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', label);
    canvas.setAttribute('aria-roledescription', 'interactive 3D view');
    container.append(canvas);
    this.count = document.createElement('span');
    this.count.className = 'viewer-count';
    container.append(this.count);

    this.scene = new Scene();
    this.camera = new PerspectiveCamera(40, 1, 0.01, 100);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.minDistance = 0.4;
    this.controls.maxDistance = 12;
    this.controls.addEventListener('change', () => this.render());
    canvas.addEventListener('keydown', (e) => this.onKey(e));
    this.material = new PointsMaterial({ size: 0.04, vertexColors: true, sizeAttenuation: true });
    this.points = null;
    this.resetView();
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(container);
    this.resize();
  }

  /** Show `xyz` (Float32Array of x, y, z), centred and scaled to the unit sphere; returns the point count. */
  setPoints(xyz) {
    const n = xyz.length / 3;
    const min = [Infinity, Infinity, Infinity];
    const max = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < n; i++) {
      for (let d = 0; d < 3; d++) {
        const v = xyz[3 * i + d];
        if (v < min[d]) min[d] = v;
        if (v > max[d]) max[d] = v;
      }
    }
    const centre = min.map((m, d) => (m + max[d]) / 2);
    let radius = 0;
    for (let i = 0; i < n; i++) {
      const dx = xyz[3 * i] - centre[0], dy = xyz[3 * i + 1] - centre[1], dz = xyz[3 * i + 2] - centre[2];
      radius = Math.max(radius, dx * dx + dy * dy + dz * dz);
    }
    const scale = radius > 0 ? 1 / Math.sqrt(radius) : 1;
    const pos = new Float32Array(n * 3);
    const col = new Float32Array(n * 3);
    const c = new Color();
    for (let i = 0; i < n; i++) {
      for (let d = 0; d < 3; d++) pos[3 * i + d] = (xyz[3 * i + d] - centre[d]) * scale;
      c.lerpColors(LOW, HIGH, (pos[3 * i + 1] + 1) / 2);
      col[3 * i] = c.r; col[3 * i + 1] = c.g; col[3 * i + 2] = c.b;
    }
    const geometry = new BufferGeometry();
    geometry.setAttribute('position', new Float32BufferAttribute(pos, 3));
    geometry.setAttribute('color', new Float32BufferAttribute(col, 3));
    if (this.points) {
      this.scene.remove(this.points);
      this.points.geometry.dispose();
    }
    this.material.size = n > 20000 ? 0.015 : n > 4000 ? 0.025 : 0.04;
    this.points = new Points(geometry, this.material);
    this.scene.add(this.points);
    this.count.textContent = `${n.toLocaleString()} points`;
    this.resetView();
    return n;
  }

  clear() {
    if (this.points) {
      this.scene.remove(this.points);
      this.points.geometry.dispose();
      this.points = null;
    }
    this.count.textContent = '';
    this.render();
  }

  resetView() {
    this.controls.target.set(0, 0, 0);
    this.camera.position.copy(HOME);
    this.controls.update();
    this.render();
  }

  orbit(dTheta, dPhi) {
    const offset = this.camera.position.clone().sub(this.controls.target);
    const s = new Spherical().setFromVector3(offset);
    s.theta += dTheta;
    s.phi = Math.min(Math.PI - 0.05, Math.max(0.05, s.phi + dPhi));
    offset.setFromSpherical(s);
    this.camera.position.copy(this.controls.target).add(offset);
    this.controls.update();
  }

  zoom(factor) {
    const offset = this.camera.position.clone().sub(this.controls.target);
    const len = Math.min(this.controls.maxDistance, Math.max(this.controls.minDistance, offset.length() * factor));
    this.camera.position.copy(this.controls.target).add(offset.setLength(len));
    this.controls.update();
  }

  onKey(e) {
    const step = Math.PI / 18;
    const actions = {
      ArrowLeft: () => this.orbit(-step, 0), ArrowRight: () => this.orbit(step, 0),
      ArrowUp: () => this.orbit(0, -step), ArrowDown: () => this.orbit(0, step),
      '+': () => this.zoom(0.85), '=': () => this.zoom(0.85), '-': () => this.zoom(1 / 0.85),
      0: () => this.resetView(),
    };
    const act = actions[e.key];
    if (act && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      act();
    }
  }

  resize() {
    const w = this.container.clientWidth;
    const h = this.container.clientHeight;
    if (!w || !h) return;
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
  }
}
