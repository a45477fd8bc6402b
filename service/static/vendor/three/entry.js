export {
	BufferGeometry, Color, Float32BufferAttribute, PerspectiveCamera, Points, PointsMaterial, REVISION, Scene,
	Spherical, Vector3, WebGLRenderer
} from 'three';
export { OrbitControls } from 'three/addons/controls/OrbitControls.js';
export { PLYLoader } from 'three/addons/loaders/PLYLoader.js';
