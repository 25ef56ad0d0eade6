/** Data sets and batches. */
export { Batches, CIFAR10_NAMES, loadCifarBinary, loadIdxDataset, loadMnist, mnistDir, MNIST_MEAN, MNIST_STD, numberNames, Rng, select, split } from './dataset';
export type { BatchOptions, Dataset, SelectOptions } from './dataset';
export { fashionMnistDir, FASHION_MNIST_MEAN, FASHION_MNIST_NAMES, FASHION_MNIST_STD, loadFashionMnist } from './fashion';
export { parseIdx, readIdx } from './idx';
export type { IdxArray } from './idx';
export { decodeImage, imageSize, loadImageFolder, MAX_PIXELS, MAX_SIDE, prepareImage, readImage } from './images';
export type { Image, ReadImageOptions } from './images';
export { ImageStream, imageFolder, imageList, isImageStream } from './stream';
export type { ImageStreamOptions, LabelledFile, StreamStats } from './stream';
export type { CropBox } from './images';
